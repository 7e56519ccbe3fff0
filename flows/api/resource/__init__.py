"""The resource API under ``/api/``: flows, their versions, executions, task types, secrets.

One module per resource (``flows``, ``executions``, ``task_types``, ``secrets``) with what they
share in ``base``; their ``serializers``, ``filters``, ``examples`` and ``urls`` beside them.

Viewsets stay thin: they check the request's shape, call ``flows.services`` for every write
(``flows.selectors`` for the reads other faces share) and serialize what comes back. Who may
call what is ``action_permissions`` on each viewset (see flows.api.permissions and the
README's role table).

Scope: flows, executions and task types are shared by the whole team, so every user holding
a model's ``view`` permission sees all of its rows; ``get_queryset`` returns nothing to a
user without it, and shapes each action's query (joins, deferred documents, prefetches).
Secrets' names and metadata are read with ``view_flow`` (flow documents name them anyway);
their values are read by no action at all.
"""
