import json
import os
from datetime import date

from django.apps import AppConfig


def event(group, instance_id, context):
    return {"group": group, "key": f"{group}_{instance_id}", "context": context}


def events_from_challenge(challenge, today=None):
    """spark's `challenge_events`, as the shop wrote it for django-spark."""
    today = today or date.fromisoformat(os.environ.get("SPARK_DJANGO_TODAY", date.today().isoformat()))
    if not challenge.is_active:
        return
    context = {"challenge": challenge}
    yield event("challenge_created", challenge.pk, context)
    if (today - challenge.start_date).days > 2 and challenge.donations.count() < 2:
        yield event("challenge_inactivity_2d", challenge.pk, context)
    if (challenge.end_date - today).days <= 2:
        yield event("challenge_ends_2d", challenge.pk, context)
    if challenge.end_date < today:
        yield event("challenge_ended", challenge.pk, context)


def log_event(e):
    with open(os.environ["SPARK_DJANGO_OUT"], "a", encoding="utf-8") as out:
        out.write(json.dumps({"key": e["key"], "group": e["group"]}) + "\n")


class ShopConfig(AppConfig):
    name = "shop"

    def ready(self):
        from spark import api

        api.register_group_handler(handler=log_event, group=r"^challenge")
        api.register_model_event_source(
            sender=self.get_model("Challenge"), source=events_from_challenge
        )
