"""The subcommands: each a module with its parser (``add``) and what it
does (``cmd_*``), on top of :mod:`harness.jobs`; :mod:`harness.cli` puts
them together.  :mod:`harness.commands.args` holds the option groups they
share and turns them into :class:`~harness.pipeline.Options`."""
