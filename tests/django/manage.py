#!/usr/bin/env python3
"""The Django project of the takeover test (takeover.py): django-spark 0.3.0
on PostgreSQL, as a shop runs it before it moves to spark."""
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
