"""Operators and editors may delete executions (the seed's DELETE /flow/{id}, the pages)."""

from django.db import migrations

ROLES = ("operator", "editor")


def forwards(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    permission = Permission.objects.get(
        content_type__app_label="flows", codename="delete_execution"
    )
    for group in Group.objects.filter(name__in=ROLES):
        group.permissions.add(permission)


def backwards(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    permission = Permission.objects.filter(
        content_type__app_label="flows", codename="delete_execution"
    ).first()
    if permission is not None:
        for group in Group.objects.filter(name__in=ROLES):
            group.permissions.remove(permission)


class Migration(migrations.Migration):
    dependencies = [("flows", "0005_roles")]

    operations = [migrations.RunPython(forwards, backwards)]
