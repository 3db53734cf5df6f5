"""Stage 1: rectifiers (B×C×H×W -> B×C×H×W). Importing this package registers them."""

from strkit.models.rectifiers import identity, scrn, tps  # noqa: F401
