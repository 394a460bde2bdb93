from django.db import models


class Challenge(models.Model):
    """The `challenge` table the test makes (and spark reads)."""

    title = models.TextField()
    user_email = models.TextField()
    is_active = models.BooleanField()
    start_date = models.DateField()
    end_date = models.DateField()

    class Meta:
        managed = False
        db_table = "challenge"


class Donation(models.Model):
    challenge = models.ForeignKey(Challenge, models.CASCADE, related_name="donations")
    amount = models.IntegerField()

    class Meta:
        managed = False
        db_table = "donation"
