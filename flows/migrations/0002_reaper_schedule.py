from django.core.management import call_command
from django.db import migrations


def forwards(apps, schema_editor):
    # The shared cache (database backend unless REDIS_URL is set) is where django-q2 clusters
    # publish their status; creating its table here means `migrate` is the only setup step.
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="flowmanager.reaper",
        defaults={
            "func": "flows.jobs.reap",
            "schedule_type": "I",  # MINUTES
            "minutes": 1,
            "repeats": -1,
        },
    )


def backwards(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="flowmanager.reaper").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("flows", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
