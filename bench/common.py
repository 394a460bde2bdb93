"""What the benchmarks in bench/ share: the challenge source's config with
one jsonl handler, and counting a file's lines."""

CHALLENGE_QUERY = ("SELECT c.*, (SELECT count(*) FROM donation d WHERE d.challenge_id = c.id) "
                   "AS donation_count FROM challenge c")


def challenge_config(database, source_extra=""):
    """A config with `database` (the lines of [database]), the challenge
    source (with `source_extra` lines, e.g. a cursor) and a jsonl handler
    `log` writing events.jsonl."""
    return f"""
[database]
{database}

[[sources]]
name = "challenges"
function = "challenge_events"
query = "{CHALLENGE_QUERY}"
{source_extra}

[[handlers]]
name = "log"
group = "."
kind = "jsonl"
path = "events.jsonl"
"""


def lines(path):
    """How many lines the file at `path` has (0 if it does not exist)."""
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0
