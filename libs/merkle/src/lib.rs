//! The transfer log's Merkle tree (RFC 6962 / RFC 9162, SHA-256): leaf and node hashing, the
//! tree head, inclusion and consistency proofs, and their verification.
//!
//! The server never holds the whole tree in memory: it stores the hash of every *complete*
//! subtree, addressed as (level, index) — the node over leaves
//! `index * 2^level .. (index + 1) * 2^level` — and every computation here asks for the O(log n)
//! nodes it needs through a lookup function. [`needed`] runs the same computation with a
//! recording lookup, so the caller can fetch exactly those nodes in one query first.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// A stored complete subtree: (level, index).
pub type Node = (u32, u64);

/// The bytes a checkpoint signs (`docs/contracts.md`):
/// `origin\ntree_size\nbase64(root)\nunix_seconds\n`, base64 standard with padding.
pub fn checkpoint_bytes(origin: &str, tree_size: i64, root: &[u8], unix_seconds: i64) -> Vec<u8> {
    format!("{origin}\n{tree_size}\n{}\n{unix_seconds}\n", base64(root)).into_bytes()
}

/// Standard base64 with padding (RFC 4648 section 4), for the checkpoint text.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// RFC 6962 leaf hash: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(data);
    hasher.finalize().into()
}

/// RFC 6962 interior node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two smaller than `n` (n >= 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The complete subtrees that the append of leaf `index` completes, bottom up, each with the
/// node to its left that it is combined with: (new node, left sibling). The leaf itself is
/// (0, index).
pub fn completed_by(index: u64) -> Vec<(Node, Node)> {
    let mut completed = Vec::new();
    let mut level = 0;
    let mut i = index;
    while i % 2 == 1 {
        completed.push(((level + 1, i / 2), (level, i - 1)));
        level += 1;
        i /= 2;
    }
    completed
}

/// MTH(D[start .. start + size]) for a range aligned as the RFC's recursion produces it: a
/// left part is always a complete subtree; a right part is split again.
fn range_hash(start: u64, size: u64, node: &mut impl FnMut(Node) -> Hash) -> Hash {
    if size.is_power_of_two() {
        let level = size.trailing_zeros();
        return node((level, start >> level));
    }
    let k = split(size);
    let left = range_hash(start, k, node);
    let right = range_hash(start + k, size - k, node);
    node_hash(&left, &right)
}

/// The tree head of the first `size` leaves.
pub fn root(size: u64, mut node: impl FnMut(Node) -> Hash) -> Hash {
    if size == 0 {
        return empty_root();
    }
    range_hash(0, size, &mut node)
}

/// Every complete subtree over `leaves`, as the service stores them on append: (level, index)
/// to hash.
pub fn subtrees(leaves: &[Hash]) -> std::collections::HashMap<Node, Hash> {
    let mut nodes = std::collections::HashMap::new();
    for (i, leaf) in (0u64..).zip(leaves) {
        nodes.insert((0, i), *leaf);
        for (new, left) in completed_by(i) {
            let right = (new.0 - 1, new.1 * 2 + 1);
            if let (Some(l), Some(r)) = (nodes.get(&left), nodes.get(&right)) {
                let hash = node_hash(l, r);
                nodes.insert(new, hash);
            }
        }
    }
    nodes
}

/// The tree head over `leaves` held in memory (an auditor's export).
pub fn tree_root(leaves: &[Hash]) -> Hash {
    let nodes = subtrees(leaves);
    root(leaves.len() as u64, |node| {
        nodes.get(&node).copied().unwrap_or([0u8; 32])
    })
}

/// RFC 9162 inclusion proof (audit path) of leaf `index` in the tree of `size` leaves,
/// `index < size`: sibling hashes from the leaf upwards.
pub fn inclusion_proof(index: u64, size: u64, mut node: impl FnMut(Node) -> Hash) -> Vec<Hash> {
    let mut path = Vec::new();
    path_of(index, 0, size, &mut node, &mut path);
    path
}

fn path_of(
    index: u64,
    start: u64,
    size: u64,
    node: &mut impl FnMut(Node) -> Hash,
    path: &mut Vec<Hash>,
) {
    if size <= 1 {
        return;
    }
    let k = split(size);
    if index < k {
        path_of(index, start, k, node, path);
        path.push(range_hash(start + k, size - k, node));
    } else {
        path_of(index - k, start + k, size - k, node, path);
        path.push(range_hash(start, k, node));
    }
}

/// RFC 9162 consistency proof between the trees of `first` and `second` leaves,
/// `1 <= first <= second`.
pub fn consistency_proof(first: u64, second: u64, mut node: impl FnMut(Node) -> Hash) -> Vec<Hash> {
    let mut proof = Vec::new();
    subproof(first, 0, second, true, &mut node, &mut proof);
    proof
}

fn subproof(
    m: u64,
    start: u64,
    n: u64,
    complete: bool,
    node: &mut impl FnMut(Node) -> Hash,
    proof: &mut Vec<Hash>,
) {
    if m == n {
        if !complete {
            proof.push(range_hash(start, n, node));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, k, complete, node, proof);
        proof.push(range_hash(start + k, n - k, node));
    } else {
        subproof(m - k, start + k, n - k, false, node, proof);
        proof.push(range_hash(start, k, node));
    }
}

/// The nodes `compute` asks for, in order of first use: run a computation with this lookup to
/// learn what to fetch, then run it again with the fetched hashes.
pub fn needed(compute: impl FnOnce(&mut dyn FnMut(Node) -> Hash)) -> Vec<Node> {
    let mut nodes = Vec::new();
    compute(&mut |node| {
        if !nodes.contains(&node) {
            nodes.push(node);
        }
        [0u8; 32]
    });
    nodes
}

/// RFC 9162 section 2.1.3.2: whether `proof` shows leaf `index` with `leaf` in the tree of
/// `size` leaves whose head is `root`.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// RFC 9162 section 2.1.4.2: whether `proof` shows the tree of `first` leaves (head
/// `first_root`) is a prefix of the tree of `second` leaves (head `second_root`).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first == 0 || first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((seed, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*seed, *seed);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && fr == *first_root && sr == *second_root
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// MTH straight from RFC 6962, over the leaves in memory.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn leaves(n: usize, seed: u8) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&[seed, (i % 256) as u8, (i / 256) as u8]))
            .collect()
    }

    #[test]
    fn checkpoint_text_is_four_lines_with_padded_base64() {
        assert_eq!(
            checkpoint_bytes("portal-transfer/jp", 42, &[0xfb, 0xff, 0x01], 1_795_000_000),
            b"portal-transfer/jp\n42\n+/8B\n1795000000\n"
        );
        assert_eq!(base64(&[1]), "AQ==");
        assert_eq!(base64(&[1, 2]), "AQI=");
        assert_eq!(base64(&[0u8; 32]).len(), 44);
    }

    #[test]
    fn the_empty_tree_and_one_leaf_follow_rfc_6962() {
        assert_eq!(
            empty_root(),
            [
                0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f,
                0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b,
                0x78, 0x52, 0xb8, 0x55
            ]
        );
        let one = leaves(1, 0);
        let nodes = subtrees(&one);
        assert_eq!(root(1, |n| nodes[&n]), one[0]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn roots_from_stored_subtrees_match_the_rfc(n in 0usize..300, seed in any::<u8>()) {
            let leaves = leaves(n, seed);
            let nodes = subtrees(&leaves);
            prop_assert_eq!(root(n as u64, |node| nodes[&node]), reference_root(&leaves));
            prop_assert_eq!(tree_root(&leaves), reference_root(&leaves));
            let read = needed(|node| {
                root(n as u64, node);
            });
            // Only O(log n) stored nodes are read: one per set bit of n.
            prop_assert!(read.len() <= (n as u64).count_ones() as usize);
        }

        #[test]
        fn every_inclusion_proof_verifies_and_a_forged_one_fails(
            n in 1usize..200,
            pick in any::<prop::sample::Index>(),
            seed in any::<u8>(),
        ) {
            let leaves = leaves(n, seed);
            let nodes = subtrees(&leaves);
            let index = pick.index(n) as u64;
            let head = reference_root(&leaves);
            let proof = inclusion_proof(index, n as u64, |node| nodes[&node]);
            prop_assert!(verify_inclusion(index, n as u64, &leaves[index as usize], &proof, &head));
            let read = needed(|node| {
                inclusion_proof(index, n as u64, node);
            });
            let bits = (64 - (n as u64).leading_zeros()) as usize;
            prop_assert!(read.len() <= 2 * bits, "{} nodes for n = {}", read.len(), n);
            // A different leaf, a different index or a changed hash does not verify.
            let other = leaf_hash(b"forged");
            prop_assert!(!verify_inclusion(index, n as u64, &other, &proof, &head));
            if n > 1 {
                let wrong = (index + 1) % n as u64;
                prop_assert!(
                    leaves[wrong as usize] == leaves[index as usize]
                        || !verify_inclusion(wrong, n as u64, &leaves[index as usize], &proof, &head)
                );
                let mut forged = proof.clone();
                forged[0][0] ^= 1;
                prop_assert!(!verify_inclusion(index, n as u64, &leaves[index as usize], &forged, &head));
            }
        }

        #[test]
        fn every_consistency_proof_verifies_and_a_forged_one_fails(
            second in 1usize..200,
            pick in any::<prop::sample::Index>(),
            seed in any::<u8>(),
        ) {
            let leaves = leaves(second, seed);
            let nodes = subtrees(&leaves);
            let first = pick.index(second) + 1;
            let (m, n) = (first as u64, second as u64);
            let first_root = reference_root(&leaves[..first]);
            let second_root = reference_root(&leaves);
            let proof = consistency_proof(m, n, |node| nodes[&node]);
            prop_assert!(verify_consistency(m, n, &first_root, &second_root, &proof));
            // An altered older tree is not a prefix.
            let mut altered = leaves.clone();
            altered[pick.index(first)] = leaf_hash(b"altered");
            let altered_root = reference_root(&altered[..first]);
            prop_assert!(!verify_consistency(m, n, &altered_root, &second_root, &proof));
            if let Some(hash) = proof.first() {
                let mut forged = proof.clone();
                forged[0] = node_hash(hash, hash);
                prop_assert!(!verify_consistency(m, n, &first_root, &second_root, &forged));
            }
        }
    }
}
