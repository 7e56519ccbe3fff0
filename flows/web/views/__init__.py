"""The operator pages, one module per page family, as ``flows.api.resource`` has one per
resource: ``home`` (the dashboard, the favicon), ``flows`` (list, one flow, its versions,
schedule and run form), ``builder`` (new and edit, import, export), ``executions`` (list,
bulk delete, one execution, its children, downloads) and ``controls`` (the POSTs that act on
an execution). What they share is ``common``.

Views stay thin: they check the request's shape, call ``flows.services`` for every write
(``flows.selectors`` and the models' QuerySet methods for reads) and render. What a page
shows is computed by ``flows.web.presenters``; the builder's forms are ``flows.web.builder``
and what a POST of the builder asks for is ``flows.web.builder_page``.
"""
