"""Approving, rejecting or signalling a waiting step becomes a permission of its own,
``flows.signal_execution``, with a role that holds only it besides reading: ``approver``.

Until now the signal needed ``start_execution``. So that nobody loses a right on upgrade, every
group and every user that holds ``start_execution`` now (operator, editor, and any group an
admin made) also gets ``signal_execution``; from then on the two are granted and taken away
separately. The permission lists are frozen here on purpose, as in 0005.
"""

from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import migrations

SIGNAL = "signal_execution"
# What the viewer role holds (0005): reading flows, versions, executions, steps, log lines.
VIEW = [
    "view_flow",
    "view_flowversion",
    "view_execution",
    "view_taskrun",
    "view_executionevent",
]
APPROVER = VIEW + [SIGNAL]


def forwards(apps, schema_editor):
    # Permissions are normally made after `migrate` (post_migrate); make the new one now so
    # the groups can hold it (as 0005 does).
    app_config = apps.get_app_config("flows")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    User = apps.get_model(settings.AUTH_USER_MODEL)
    flows_permissions = Permission.objects.filter(content_type__app_label="flows")
    signal = flows_permissions.get(codename=SIGNAL)

    # Whoever may answer a signal today (it needed start_execution) still may.
    for group in Group.objects.filter(
        permissions__content_type__app_label="flows", permissions__codename="start_execution"
    ).distinct():
        group.permissions.add(signal)
    for user in User.objects.filter(
        user_permissions__content_type__app_label="flows",
        user_permissions__codename="start_execution",
    ).distinct():
        user.user_permissions.add(signal)

    approver, _ = Group.objects.get_or_create(name="approver")
    permissions = flows_permissions.filter(codename__in=APPROVER)
    missing = set(APPROVER) - set(permissions.values_list("codename", flat=True))
    if missing:
        raise RuntimeError(f"permissions missing for role approver: {sorted(missing)}")
    approver.permissions.set(permissions)


def backwards(apps, schema_editor):
    # Before 0010 nobody held signal_execution (the signal needed start_execution): drop the
    # role and the permission with every grant of it.
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    User = apps.get_model(settings.AUTH_USER_MODEL)
    Group.objects.filter(name="approver").delete()
    signal = Permission.objects.filter(content_type__app_label="flows", codename=SIGNAL)
    Group.permissions.through.objects.filter(permission__in=signal).delete()
    User.user_permissions.through.objects.filter(permission__in=signal).delete()
    signal.delete()


class Migration(migrations.Migration):
    dependencies = [("flows", "0009_child_executions")]

    operations = [
        migrations.AlterModelOptions(
            name="execution",
            options={
                "ordering": ["-created_at"],
                "permissions": [
                    ("start_execution", "Can start executions and re-run them"),
                    ("cancel_execution", "Can cancel executions"),
                    ("signal_execution", "Can approve, reject or signal waiting steps"),
                ],
            },
        ),
        migrations.RunPython(forwards, backwards),
    ]
