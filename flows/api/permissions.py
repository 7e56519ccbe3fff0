"""Who may do what in the resource API: one Django permission per viewset action.

Roles are Django groups made by migrations 0005 and 0010 (viewer, approver, operator, editor);
superusers (admins) hold every permission. Anonymous requests are answered 401, a role that may
not act 403.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

VIEW_FLOWS = "flows.view_flow"
ADD_FLOWS = "flows.add_flow"
CHANGE_FLOWS = "flows.change_flow"
DELETE_FLOWS = "flows.delete_flow"
VIEW_EXECUTIONS = "flows.view_execution"
START_EXECUTIONS = "flows.start_execution"
CANCEL_EXECUTIONS = "flows.cancel_execution"
# Approving, rejecting or signalling a waiting step: a right of its own (the approver role),
# apart from starting and cancelling.
SIGNAL_EXECUTIONS = "flows.signal_execution"


class ActionPermission(BasePermission):
    """Require the permission the view's ``action_permissions`` names for its action.

    An action missing from the map is refused: a new action is closed until someone decides
    who may call it.
    """

    message = "your role may not do this"

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False  # DRF answers 401 (token auth sends WWW-Authenticate)
        action = getattr(view, "action", None)
        if action is None or action == "metadata":
            # A method the endpoint lacks (OPTIONS too): DRF answers 405 after this check.
            return True
        permission = view.action_permissions.get(action)
        if permission is None:
            return False
        if not user.has_perm(permission):
            self.message = f"your role may not do this (needs permission '{permission}')"
            return False
        return True


DELETE_EXECUTIONS = "flows.delete_execution"
# Creating, replacing and deleting secrets (admins, the secrets_admin role); nobody reads one.
MANAGE_SECRETS = "flows.manage_secret"
# Creating, changing, deleting and testing notification channels and alert rules (admins, the
# editor role); reading them and the delivery log needs VIEW_EXECUTIONS.
MANAGE_ALERTS = "flows.manage_alerts"
# Defining, changing and deleting concurrency limits (admins, the limits_admin role).
MANAGE_LIMITS = "flows.manage_limit"


def require(permission: str) -> type[BasePermission]:
    """A permission class for a plain APIView that needs one Django permission."""

    class Required(BasePermission):
        message = f"your role may not do this (needs permission '{permission}')"

        def has_permission(self, request: Request, view: Any) -> bool:
            user = request.user
            return bool(user and user.is_authenticated and user.has_perm(permission))

    Required.__name__ = f"Require_{permission.replace('.', '_')}"
    return Required
