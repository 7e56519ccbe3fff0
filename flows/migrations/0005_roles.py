"""Roles of the resource API as Django groups: viewer < operator < editor (admins are superusers).

The permission lists are frozen here on purpose: a later change of roles is a new migration.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

VIEW = [
    "view_flow",
    "view_flowversion",
    "view_execution",
    "view_taskrun",
    "view_executionevent",
]
OPERATE = ["start_execution", "cancel_execution"]
EDIT = ["add_flow", "change_flow", "delete_flow"]

ROLES = {
    "viewer": VIEW,
    "operator": VIEW + OPERATE,
    "editor": VIEW + OPERATE + EDIT,
}


def forwards(apps, schema_editor):
    # Permissions are normally made after `migrate` (post_migrate); make them now so the
    # groups can hold them on a fresh database.
    app_config = apps.get_app_config("flows")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        permissions = Permission.objects.filter(
            content_type__app_label="flows", codename__in=codenames
        )
        missing = set(codenames) - set(permissions.values_list("codename", flat=True))
        if missing:
            raise RuntimeError(f"permissions missing for role {name}: {sorted(missing)}")
        group.permissions.set(permissions)


def backwards(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=list(ROLES)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("flows", "0004_controls_schedules_idempotency"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="execution",
            options={
                "ordering": ["-created_at"],
                "permissions": [
                    ("start_execution", "Can start executions and re-run them"),
                    ("cancel_execution", "Can cancel executions"),
                ],
            },
        ),
        migrations.RunPython(forwards, backwards),
    ]
