"""The hvsuite dashboard: a web page, an HTTP API with its OpenAPI document, and the operator's
`hvsuite` command, served on the primary host from what the controller publishes.

Installed on the host as the package ``hvsuite_dashboard`` (its modules import each other
relatively); the suite's tests import the framework-free modules as ``steps.golf4.app``.
"""

__version__ = "1.0.0"
