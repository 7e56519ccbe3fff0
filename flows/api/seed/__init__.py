"""The seed's endpoints (``/flow/...``, ``/health``): same paths, shapes and status codes as
the seed's README, so its clients keep working. Their ``views``, ``serializers`` and ``urls``;
the error shape, schema helpers and permissions they share with the resource API are in
flows/api/."""
