"""The virtual directory tree: inodes, lazy directories and rendered JSON files.

Runs on the trio thread and knows nothing of FUSE or HTTP. Split along its seams:
nodes (node types and the inode table), layout (what the root, workspace and artifact
levels contain), version (a version's assets and `.comet/` files), render (the JSON
documents as plain functions of model objects) and facade (the `Tree` that fs.py and the
Engine use). This package re-exports what those callers need.
"""

from cometfs.tree.facade import Tree
from cometfs.tree.nodes import (
    ROOT_INODE,
    AssetFile,
    Attributes,
    Directory,
    Node,
    Symlink,
    VirtualFile,
)
from cometfs.tree.version import META_DIR

__all__ = [
    "META_DIR",
    "ROOT_INODE",
    "AssetFile",
    "Attributes",
    "Directory",
    "Node",
    "Symlink",
    "Tree",
    "VirtualFile",
]
