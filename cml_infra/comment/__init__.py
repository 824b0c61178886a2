"""Reports as comments on a pull request, issue or commit, with their local files stored in the
repository (an orphan branch): `comment(CommentOptions(...)) -> CommentResult`."""

from __future__ import annotations

from cml_infra.comment.post import CommentOptions, CommentResult, comment

__all__ = ["CommentOptions", "CommentResult", "comment"]
