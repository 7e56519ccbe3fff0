"""``manage.py rotate_secret_keys``: re-encrypt every stored secret under the first key of
``FLOW_SECRET_KEYS``, so that the keys after it can be dropped."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from flows import services


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret under the first key of FLOW_SECRET_KEYS (the others "
        "only decrypt). Put the new key first, run this, then remove the old key. All or "
        "nothing: a value that no configured key decrypts stops it before anything changes."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            count = services.secret_keys_rotate()
        except services.ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"re-encrypted {count} secret(s) under the first key of FLOW_SECRET_KEYS")
