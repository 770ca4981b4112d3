//! The openraft type configuration of the meta group.

use crate::namespace::{MetaCommand, MetaResult};

openraft::declare_raft_types!(
    /// Raft types of the Curvine meta group.
    pub TypeConfig:
        D = MetaCommand,
        R = MetaResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        // A file: snapshots stream to and from disk, never whole in memory.
        SnapshotData = tokio::fs::File,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
