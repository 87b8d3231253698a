//! Hash maps and sets keyed by entry paths and inode numbers, with foldhash
//! instead of SipHash: hashing paths was a tenth of `convert`'s user time.
//!
//! foldhash seeds every map from a per-process random seed, so colliding
//! names cannot be prepared in advance; a layer is read once, in a process
//! that ends, so its seeds cannot be learnt from the outside either. The
//! entry limits bound how many keys a hostile layer can add.

pub(crate) use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
