-- Demo data for spark.example.toml: challenges and donations with dates
-- around the day the demo database is created, so that every branch of the
-- example source `challenge_events` fires. spark runs this script once, when
-- var/demo.sqlite3 does not exist yet (see `create_from`).
CREATE TABLE challenge (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    user_email TEXT NOT NULL,
    is_active INTEGER NOT NULL,
    start_date TEXT NOT NULL,
    end_date TEXT NOT NULL
);
CREATE TABLE donation (
    id INTEGER PRIMARY KEY,
    challenge_id INTEGER NOT NULL REFERENCES challenge(id),
    amount INTEGER NOT NULL
);
CREATE INDEX donation_challenge_id ON donation(challenge_id);

INSERT INTO challenge (id, title, user_email, is_active, start_date, end_date) VALUES
    -- started 10 days ago, no donations: created, inactivity_2d
    (1, 'Plant 100 trees', 'ana@example.org', 1, date('now', 'localtime', '-10 days'), date('now', 'localtime', '+20 days')),
    -- same, but three donations: created only
    (2, 'Run a marathon', 'ben@example.org', 1, date('now', 'localtime', '-10 days'), date('now', 'localtime', '+20 days')),
    -- ends tomorrow: created, ends_2d
    (3, 'Bake sale', 'cleo@example.org', 1, date('now', 'localtime', '-1 days'), date('now', 'localtime', '+1 days')),
    -- ended five days ago with one donation: created, inactivity_2d, ends_2d, ended
    (4, 'Clean the beach', 'dan@example.org', 1, date('now', 'localtime', '-30 days'), date('now', 'localtime', '-5 days')),
    -- inactive: nothing
    (5, 'Old draft', 'eve@example.org', 0, date('now', 'localtime', '-30 days'), date('now', 'localtime', '-5 days')),
    -- ends in exactly two days: created, ends_2d
    (6, 'Charity swim', 'fay@example.org', 1, date('now', 'localtime', '-3 days'), date('now', 'localtime', '+2 days')),
    -- starts in three days: created
    (7, 'Learn to knit', 'gus@example.org', 1, date('now', 'localtime', '+3 days'), date('now', 'localtime', '+40 days')),
    -- started exactly two days ago, ended yesterday: created, ends_2d, ended
    (8, 'Library drive', 'hal@example.org', 1, date('now', 'localtime', '-2 days'), date('now', 'localtime', '-1 days'));

INSERT INTO donation (challenge_id, amount) VALUES
    (2, 20), (2, 35), (2, 50),
    (4, 10),
    (6, 5), (6, 15),
    (8, 1), (8, 2), (8, 3), (8, 4), (8, 5);
