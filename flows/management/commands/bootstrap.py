"""First-run setup: the sample flow and an admin login. Safe to run again."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.authtoken.models import Token

from flows import services
from flows.models import Flow


class Command(BaseCommand):
    help = (
        "Load the sample flow (examples/sample_flow.json) if it is missing and make sure an admin "
        "login exists. The first admin gets FLOW_ADMIN_PASSWORD, or a random password printed once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-sample", action="store_true", help="Do not load the sample flow.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["no_sample"]:
            self._sample()
        self._admin()

    def _sample(self) -> None:
        path = Path(settings.BASE_DIR) / "examples" / "sample_flow.json"
        document = json.loads(path.read_text())
        flow_id = document["flow"]["id"]
        if Flow.objects.filter(pk=flow_id).exists():
            self.stdout.write(f"sample flow '{flow_id}' already present")
            return
        version = services.flow_create(document=document)
        self.stdout.write(f"sample flow '{version.flow_id}' loaded (v{version.version})")

    def _admin(self) -> None:
        User = get_user_model()
        username = os.environ.get("FLOW_ADMIN_USER", "admin")
        admin = User.objects.filter(is_superuser=True).order_by("pk").first()
        if admin is not None:
            token, _ = Token.objects.get_or_create(user=admin)
            self.stdout.write(
                f"admin login: user '{admin.get_username()}' (password set on first run; "
                f"change it with: python manage.py changepassword {admin.get_username()})"
            )
            self.stdout.write(f"API token for '{admin.get_username()}': {token.key}")
            return
        if User.objects.filter(**{User.USERNAME_FIELD: username}).exists():
            raise CommandError(
                f"user '{username}' exists but is not a superuser; set FLOW_ADMIN_USER to a "
                f"new name, or promote '{username}' yourself (manage.py shell)"
            )
        password = os.environ.get("FLOW_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        admin = User.objects.create_superuser(username=username, email="", password=password)
        token = Token.objects.create(user=admin)
        shown = "from FLOW_ADMIN_PASSWORD" if os.environ.get("FLOW_ADMIN_PASSWORD") else password
        self.stdout.write(
            self.style.SUCCESS(f"admin login created: user '{username}', password: {shown}")
        )
        self.stdout.write(
            "  (shown once; change it with: python manage.py changepassword " + username + ")"
        )
        self.stdout.write(f"API token for '{username}': {token.key}")
