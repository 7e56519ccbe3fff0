from django.apps import AppConfig


class FlowsConfig(AppConfig):
    name = "flows"
    verbose_name = "Flows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_migrate, post_save
        from django_q.signals import post_spawn

        from flows import jobs, services, vault
        from flows.engine import start_checkpoint_timer, start_due_step_timer, start_reaper_timer
        from flows.models import Secret

        # At every `manage.py migrate`: the daily purge schedule follows FLOW_PURGE_AFTER_DAYS.
        post_migrate.connect(
            services.purge_schedule_sync, sender=self, dispatch_uid="flows.purge_schedule_sync"
        )
        # In each qcluster worker process: with the Redis broker, delayed steps (retries) are
        # woken when due by a timer there (the broker cannot deliver a message late).
        post_spawn.connect(start_due_step_timer, dispatch_uid="flows.engine.start_due_step_timer")
        # ... and every worker process, whatever the broker, runs the reaper's quick pass every
        # FLOW_REAP_EVERY_SECONDS: dead workers' steps and lost messages recovered in seconds.
        post_spawn.connect(start_reaper_timer, dispatch_uid="flows.engine.start_reaper_timer")
        # And what follows executions' ends (the outbox: triggers, notifications), each second.
        post_spawn.connect(jobs.start_ends_timer, dispatch_uid="flows.jobs.start_ends_timer")
        # And the notifications outbox (alerts), in a thread of its own: a channel that is
        # down delays its messages, never the ends or the steps.
        post_spawn.connect(jobs.start_notify_timer, dispatch_uid="flows.jobs.start_notify_timer")
        # On a SQLite file: the write-ahead log is copied back into the database by a timer
        # of each worker process, not by whichever step's commit crosses SQLite's mark.
        post_spawn.connect(
            start_checkpoint_timer, dispatch_uid="flows.engine.start_checkpoint_timer"
        )
        # A secret changed in this process is read afresh by the next step run here (other
        # processes within FLOW_SECRET_CACHE_SECONDS).
        for signal in (post_save, post_delete):
            signal.connect(
                lambda **_: vault.forget_cached(),
                sender=Secret,
                weak=False,
                dispatch_uid=f"flows.vault.forget_cached.{signal is post_save}",
            )
