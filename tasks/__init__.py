"""Task plugins: one ``task_<type>.py`` module per task type, each with a ``<Type>Task`` class.

Nothing in this package imports Django or the ``flows`` app, so a plugin can be written and
tested on its own.
"""
