from django.apps import AppConfig


class FlowsConfig(AppConfig):
    name = "flows"
    verbose_name = "Flows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from flows.retention import sync_purge_schedule

        # At every `manage.py migrate`: the daily purge schedule follows FLOW_PURGE_AFTER_DAYS.
        post_migrate.connect(
            sync_purge_schedule, sender=self, dispatch_uid="flows.retention.sync_purge_schedule"
        )
