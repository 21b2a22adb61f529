//! The portal v1 contracts as Rust: messages, clients and servers generated at build time from
//! `proto/`, and each service's encoded descriptor set for gRPC server reflection.

/// `portal.identity.v1`: tenants, Portal Users, sign-in, deletion, data export.
pub mod identity {
    pub mod v1 {
        tonic::include_proto!("portal.identity.v1");
        /// Descriptor set of this package alone, for server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/portal.identity.v1.bin"));
    }
}

/// `portal.consent.v1`: versioned documents, the consent ledger, consent decisions.
pub mod consent {
    pub mod v1 {
        tonic::include_proto!("portal.consent.v1");
        /// Descriptor set of this package alone, for server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/portal.consent.v1.bin"));
    }
}

/// `portal.approval.v1`: approval requests between tenants and the connections they create.
pub mod approval {
    pub mod v1 {
        tonic::include_proto!("portal.approval.v1");
        /// Descriptor set of this package alone, for server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/portal.approval.v1.bin"));
    }
}

/// `portal.transfer.v1`: the entity registry, transfer decisions and their verifiable log.
pub mod transfer {
    pub mod v1 {
        tonic::include_proto!("portal.transfer.v1");
        /// Descriptor set of this package alone, for server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/portal.transfer.v1.bin"));
    }
}
