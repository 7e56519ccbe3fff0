"""Notifications and alerts (flows/services/alerts.py, flows/notify.py): channels, rules,
alerts, their marks and the notifications outbox; the permission ``manage_alerts``, granted to
the editor role (admins, superusers, hold every permission); the ``error_handler`` trigger.
"""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import migrations, models

MANAGE = "manage_alerts"


def forwards(apps, schema_editor):
    # Made now (not after `migrate`) so that the editor role can hold it, as 0013 does.
    app_config = apps.get_app_config("flows")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    manage = Permission.objects.get(content_type__app_label="flows", codename=MANAGE)
    for group in Group.objects.filter(name="editor"):
        group.permissions.add(manage)


def backwards(apps, schema_editor):
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    User = apps.get_model(settings.AUTH_USER_MODEL)
    manage = Permission.objects.filter(content_type__app_label="flows", codename=MANAGE)
    Group.permissions.through.objects.filter(permission__in=manage).delete()
    User.user_permissions.through.objects.filter(permission__in=manage).delete()
    manage.delete()


class Migration(migrations.Migration):
    dependencies = [
        ("flows", "0015_events"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name="execution",
            name="trigger",
            field=models.CharField(
                choices=[
                    ("manual", "Manual"),
                    ("schedule", "Schedule"),
                    ("rerun", "Rerun"),
                    ("parent", "Parent"),
                    ("flow", "Flow"),
                    ("backfill", "Backfill"),
                    ("error_handler", "Error Handler"),
                ],
                default="manual",
                max_length=16,
            ),
        ),
        migrations.CreateModel(
            name="AlertRule",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "event",
                    models.CharField(
                        choices=[
                            ("execution_failed", "Execution Failed"),
                            ("failures_in_a_row", "Failures In A Row"),
                            ("recovered", "Recovered"),
                            ("timed_out", "Timed Out"),
                            ("running_longer_than", "Running Longer Than"),
                            ("waiting_for_signal", "Waiting For Signal"),
                            ("webhook_refused", "Webhook Refused"),
                        ],
                        max_length=32,
                    ),
                ),
                ("threshold", models.PositiveIntegerField(blank=True, null=True)),
                ("cooldown_seconds", models.PositiveIntegerField(default=0)),
                ("enabled", models.BooleanField(default=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "flow",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="alert_rules",
                        to="flows.flow",
                    ),
                ),
            ],
            options={
                "ordering": ["id"],
                "default_permissions": (),
            },
        ),
        migrations.CreateModel(
            name="Alert",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("flow_id", models.CharField(blank=True, max_length=100)),
                ("count", models.PositiveIntegerField(default=1)),
                ("first_at", models.DateTimeField()),
                ("last_at", models.DateTimeField()),
                ("last_execution_id", models.UUIDField(blank=True, null=True)),
                ("summary", models.TextField(blank=True)),
                (
                    "rule",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="alerts",
                        to="flows.alertrule",
                    ),
                ),
            ],
            options={
                "ordering": ["-first_at"],
            },
        ),
        migrations.CreateModel(
            name="Channel",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.CharField(max_length=100, unique=True)),
                (
                    "kind",
                    models.CharField(
                        choices=[("email", "Email"), ("webhook", "Webhook"), ("slack", "Slack")],
                        max_length=16,
                    ),
                ),
                ("config", models.JSONField(blank=True, default=dict)),
                (
                    "secret",
                    models.TextField(blank=True, help_text="Encrypted under FLOW_SECRET_KEYS."),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
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
            ],
            options={
                "ordering": ["name"],
                "permissions": [
                    ("manage_alerts", "Can create, change and delete channels and rules")
                ],
                "default_permissions": (),
            },
        ),
        migrations.AddField(
            model_name="alertrule",
            name="channels",
            field=models.ManyToManyField(blank=True, related_name="rules", to="flows.channel"),
        ),
        migrations.CreateModel(
            name="Notification",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("payload", models.JSONField(default=dict)),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("pending", "Pending"),
                            ("sending", "Sending"),
                            ("retrying", "Retrying"),
                            ("sent", "Sent"),
                            ("given_up", "Given Up"),
                        ],
                        default="pending",
                        max_length=16,
                    ),
                ),
                ("attempts", models.PositiveIntegerField(default=0)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("next_attempt_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("claimed_until", models.DateTimeField(blank=True, null=True)),
                ("last_error", models.TextField(blank=True)),
                ("sent_at", models.DateTimeField(blank=True, null=True)),
                (
                    "alert",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="notifications",
                        to="flows.alert",
                    ),
                ),
                (
                    "channel",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="notifications",
                        to="flows.channel",
                    ),
                ),
            ],
            options={
                "ordering": ["-id"],
            },
        ),
        migrations.CreateModel(
            name="AlertMark",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "execution",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="flows.execution",
                    ),
                ),
                (
                    "step",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="flows.taskrun",
                    ),
                ),
                (
                    "rule",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="flows.alertrule",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("rule", "execution"), name="alertmark_execution_once"
                    ),
                    models.UniqueConstraint(fields=("rule", "step"), name="alertmark_step_once"),
                ],
            },
        ),
        migrations.AddIndex(
            model_name="alert",
            index=models.Index(fields=["rule", "flow_id", "-first_at"], name="alert_rule_idx"),
        ),
        migrations.AddIndex(
            model_name="alertrule",
            index=models.Index(fields=["event"], name="alertrule_event_idx"),
        ),
        migrations.AddIndex(
            model_name="notification",
            index=models.Index(
                condition=models.Q(("state__in", ["pending", "sending", "retrying"])),
                fields=["channel", "id"],
                name="notification_open_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="notification",
            index=models.Index(fields=["state", "-id"], name="notification_state_idx"),
        ),
        migrations.RunPython(forwards, backwards),
    ]
