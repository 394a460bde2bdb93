#!/bin/sh
# Demo `command` handler: spark runs it once per event with the event as JSON
# on stdin and its key in $SPARK_EVENT_KEY. A real one would page someone or
# call an API; this one appends a line to var/notify.log. Exiting non-zero
# makes the delivery fail (spark keeps it and retries it later).
set -eu
mkdir -p var
printf '%s notified about %s\n' "$(date -u +%FT%TZ)" "$SPARK_EVENT_KEY" >> var/notify.log
