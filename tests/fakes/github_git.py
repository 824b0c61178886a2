"""A repository's git objects and refs for the fake GitHub's Git Data and contents routes.

The object ids are git's own: a blob's is the SHA-1 of `blob <len>\\0<bytes>`, a tree's and a
commit's those of their canonical encodings (entries sorted as git sorts them, `40000` for a
subtree; `tree`, `parent`, `author`, `committer` lines), so an id computed by `git hash-object`
or by `git mktree`/`git commit-tree` on the same content is the one the fake gives.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

# Modes as the REST API writes them; git's own encoding drops the leading zero of 040000.
BLOB_MODES = ("100644", "100755", "120000")
TREE_MODE = "040000"
COMMIT_MODE = "160000"
SHA = re.compile(r"[0-9a-f]{40}\Z")


class GitError(Exception):
    """What GitHub would refuse with a 422: the message it gives."""


@dataclass(frozen=True)
class Entry:
    """One tree entry: mode as the REST API shows it, kind blob/tree/commit, object id."""

    mode: str
    kind: str
    sha: str


@dataclass(frozen=True)
class Commit:
    tree: str
    parents: tuple[str, ...]
    message: str
    author: dict[str, str]
    committer: dict[str, str]


def _kind_of(mode: str) -> str:
    if mode == TREE_MODE:
        return "tree"
    if mode == COMMIT_MODE:
        return "commit"
    return "blob"


def _identity(person: dict[str, str], seconds: int) -> str:
    return f"{person['name']} <{person['email']}> {seconds} +0000"


@dataclass
class GitStore:
    """Objects and refs ("refs/heads/main" -> commit id) of one repository."""

    objects: dict[str, tuple[str, Any]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def _put(self, kind: str, payload: bytes, value: Any) -> str:
        sha = hashlib.sha1(f"{kind} {len(payload)}\0".encode() + payload).hexdigest()
        self.objects.setdefault(sha, (kind, value))
        return sha

    def kind(self, sha: str) -> str | None:
        found = self.objects.get(sha)
        return found[0] if found else None

    # -- blobs -----------------------------------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        return self._put("blob", data, bytes(data))

    def blob(self, sha: str) -> bytes:
        kind, value = self.objects[sha]
        if kind != "blob":
            raise KeyError(sha)
        return bytes(value)

    # -- trees -----------------------------------------------------------------------------

    def put_tree(self, entries: dict[str, Entry]) -> str:
        # Git orders entries by name, a subtree's name compared as if it ended in '/'.
        def order(item: tuple[str, Entry]) -> bytes:
            name, entry = item
            return name.encode() + (b"/" if entry.kind == "tree" else b"")

        ordered = dict(sorted(entries.items(), key=order))
        payload = b"".join(
            f"{entry.mode.lstrip('0')} {name}\0".encode() + bytes.fromhex(entry.sha)
            for name, entry in ordered.items()
        )
        return self._put("tree", payload, ordered)

    def tree(self, sha: str) -> dict[str, Entry]:
        kind, value = self.objects[sha]
        if kind != "tree":
            raise KeyError(sha)
        return dict(value)

    def walk(self, tree_sha: str, prefix: str = "") -> list[tuple[str, Entry]]:
        """Every entry under a tree, depth first in git's order, with its full path."""
        found: list[tuple[str, Entry]] = []
        for name, entry in self.tree(tree_sha).items():
            path = f"{prefix}{name}"
            found.append((path, entry))
            if entry.kind == "tree":
                found += self.walk(entry.sha, path + "/")
        return found

    def build_tree(self, base_tree: str | None, changes: list[dict[str, Any]]) -> str:
        """POST /git/trees: `changes` (path, mode, type, and sha or content) applied over
        `base_tree` as GitHub applies them: a nested path updates (or creates) the subtrees
        on its way, `sha: null` deletes the path, and subtrees left empty disappear."""
        root: dict[str, Any] = {} if base_tree is None else self._expand(base_tree)
        for change in changes:
            path = str(change.get("path") or "").strip("/")
            mode = str(change.get("mode") or "")
            kind = change.get("type")
            if not path or mode not in (*BLOB_MODES, TREE_MODE, COMMIT_MODE):
                raise GitError("Invalid tree info")
            if kind is not None and kind != _kind_of(mode):
                raise GitError(f"Invalid tree info: mode {mode} is not a {kind}")
            *folders, name = path.split("/")
            node = root
            for folder in folders:
                child = node.get(folder)
                if isinstance(child, Entry):
                    if child.kind != "tree":
                        raise GitError(f"Invalid tree info: {folder} is not a tree")
                    child = self._expand(child.sha)
                if child is None:
                    child = {}
                node[folder] = child
                node = child
            if "content" in change and change["content"] is not None:
                if _kind_of(mode) != "blob":
                    raise GitError("Invalid tree info: content is for blobs")
                node[name] = Entry(mode, "blob", self.put_blob(str(change["content"]).encode()))
            elif change.get("sha") is None:
                if name not in node:
                    raise GitError(f"Invalid tree info: {path} does not exist")
                del node[name]
            else:
                sha = str(change["sha"])
                want = _kind_of(mode)
                if want != "commit" and self.kind(sha) != want:
                    raise GitError(f"tree.sha {sha} is not a valid {want}")
                node[name] = Entry(mode, want, sha)
        return self._write(root) or self.put_tree({})

    def _expand(self, tree_sha: str) -> dict[str, Any]:
        if self.kind(tree_sha) != "tree":
            raise GitError(f"base_tree {tree_sha} is not a valid tree")
        return dict(self.tree(tree_sha))

    def _write(self, node: dict[str, Any]) -> str | None:
        entries: dict[str, Entry] = {}
        for name, value in node.items():
            if isinstance(value, Entry):
                entries[name] = value
            else:
                sha = self._write(value)
                if sha is not None:
                    entries[name] = Entry(TREE_MODE, "tree", sha)
        return self.put_tree(entries) if entries else None

    # -- commits and refs ------------------------------------------------------------------

    def put_commit(
        self,
        tree: str,
        parents: list[str] | tuple[str, ...],
        message: str,
        author: dict[str, str],
        committer: dict[str, str] | None = None,
    ) -> str:
        """author/committer: {"name", "email", "date" (ISO 8601), "seconds" (its epoch)}."""
        if self.kind(tree) != "tree":
            raise GitError("Tree SHA does not exist")
        for parent in parents:
            if self.kind(parent) != "commit":
                raise GitError("Parent SHA does not exist or is not a commit object")
        committer = committer or author
        lines = [f"tree {tree}", *(f"parent {p}" for p in parents)]
        lines.append("author " + _identity(author, int(author["seconds"])))
        lines.append("committer " + _identity(committer, int(committer["seconds"])))
        payload = ("\n".join(lines) + "\n\n" + message).encode()
        value = Commit(tree, tuple(parents), message, dict(author), dict(committer))
        return self._put("commit", payload, value)

    def commit(self, sha: str) -> Commit:
        kind, value = self.objects[sha]
        if kind != "commit":
            raise KeyError(sha)
        return value  # type: ignore[no-any-return]

    def descends(self, sha: str, ancestor: str) -> bool:
        """Whether commit `sha` is `ancestor` or has it among its ancestors."""
        seen: set[str] = set()
        queue = [sha]
        while queue:
            current = queue.pop()
            if current == ancestor:
                return True
            if current in seen or self.kind(current) != "commit":
                continue
            seen.add(current)
            queue += self.commit(current).parents
        return False

    def resolve(self, ref: str) -> str | None:
        """The commit a branch name, `heads/NAME`, `refs/heads/NAME`, tag, or (abbreviated)
        commit id names; None if none."""
        for name in (ref, f"refs/{ref}", f"refs/heads/{ref}", f"refs/tags/{ref}"):
            if name.startswith("refs/") and name in self.refs:
                return self.refs[name]
        if re.fullmatch(r"[0-9a-f]{7,40}", ref):
            found = [s for s, (k, _) in self.objects.items() if k == "commit" and s.startswith(ref)]
            if len(found) == 1:
                return found[0]
        return None

    def lookup(self, commit_sha: str, path: str) -> Entry | None:
        """The entry at `path` in a commit's tree (the root tree for an empty path)."""
        entry = Entry(TREE_MODE, "tree", self.commit(commit_sha).tree)
        for name in [p for p in path.strip("/").split("/") if p]:
            if entry.kind != "tree":
                return None
            found = self.tree(entry.sha).get(name)
            if found is None:
                return None
            entry = found
        return entry

    def files(self, commit_sha: str) -> dict[str, bytes]:
        """Every blob of a commit, by path."""
        tree = self.commit(commit_sha).tree
        return {p: self.blob(e.sha) for p, e in self.walk(tree) if e.kind == "blob"}
