"""The secret store (flows/vault.py): the ``Secret`` table, the permission ``manage_secret`` and a
role that holds it besides reading: ``secrets_admin``. Admins (superusers) hold every permission.

The permission lists are frozen here on purpose, as in 0005 and 0010.
"""

import django.db.models.deletion
from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import migrations, models

MANAGE = "manage_secret"
# What the viewer role holds (0005): reading flows, versions, executions, steps, log lines.
VIEW = [
    "view_flow",
    "view_flowversion",
    "view_execution",
    "view_taskrun",
    "view_executionevent",
]
SECRETS_ADMIN = VIEW + [MANAGE]


def forwards(apps, schema_editor):
    # Permissions are normally made after `migrate` (post_migrate); make the new one now so
    # the group can hold it (as 0005 does).
    app_config = apps.get_app_config("flows")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name="secrets_admin")
    permissions = Permission.objects.filter(
        content_type__app_label="flows", codename__in=SECRETS_ADMIN
    )
    missing = set(SECRETS_ADMIN) - set(permissions.values_list("codename", flat=True))
    if missing:
        raise RuntimeError(f"permissions missing for role secrets_admin: {sorted(missing)}")
    group.permissions.set(permissions)


def backwards(apps, schema_editor):
    # The table goes with the model; the role and every grant of the permission go here.
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    User = apps.get_model(settings.AUTH_USER_MODEL)
    Group.objects.filter(name="secrets_admin").delete()
    manage = Permission.objects.filter(content_type__app_label="flows", codename=MANAGE)
    Group.permissions.through.objects.filter(permission__in=manage).delete()
    User.user_permissions.through.objects.filter(permission__in=manage).delete()
    manage.delete()


class Migration(migrations.Migration):
    dependencies = [
        ("flows", "0012_fanout_next_item"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.CreateModel(
            name="Secret",
            fields=[
                ("name", models.CharField(max_length=100, primary_key=True, serialize=False)),
                (
                    "value",
                    models.TextField(help_text="The value encrypted under FLOW_SECRET_KEYS."),
                ),
                ("description", models.CharField(blank=True, max_length=500)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "created_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "updated_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["name"],
                "permissions": [("manage_secret", "Can create, replace and delete secrets")],
                "default_permissions": (),
            },
        ),
        migrations.RunPython(forwards, backwards),
    ]
