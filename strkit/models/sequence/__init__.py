"""Stage 3: sequence models (B×T×D -> B×T×D'). Importing this package registers them."""

from strkit.models.sequence import bilstm, identity  # noqa: F401
