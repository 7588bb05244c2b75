//! Network identifiers: v1 names (`base-sepolia`) and v2 CAIP-2 ids (`eip155:84532`), both
//! resolved to a [`ChainId`].
//!
//! v2 needs no table: `eip155:<chainId>` carries the number, and any other CAIP-2 namespace
//! (`solana:…`) is refused, since this facilitator is EVM-only. v1 names need a table, a
//! [`NetworkRegistry`]: it starts with the names the official v1 SDK knows (`base`,
//! `base-sepolia`, `avalanche-fuji`, …) and the node's configuration can add more, such as a
//! local chain (`NetworkRegistry::add("anvil", ChainId(31337))`). Note that the official v1
//! clients only know their built-in names, so an added name serves our own tools and tests.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::common::echo;

/// The CAIP-2 namespace of EVM chains.
pub const EIP155: &str = "eip155";

/// An EVM chain id (EIP-155). Serde: the bare number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChainId(pub u64);

impl ChainId {
    /// Parses a v2 network id. Only `eip155:<chainId>` is accepted, the chain id a positive
    /// decimal without leading zeros (so that string equality of two ids is numeric equality).
    pub fn from_caip2(network: &str) -> Result<ChainId, NetworkError> {
        let (namespace, reference) = split_caip2(network)?;
        if namespace != EIP155 {
            return Err(NetworkError::UnsupportedNamespace {
                network: echo(network),
                namespace: namespace.to_owned(),
            });
        }
        let canonical =
            !reference.starts_with('0') && reference.bytes().all(|b| b.is_ascii_digit());
        match reference.parse::<u64>() {
            Ok(id) if canonical => Ok(ChainId(id)),
            _ => Err(NetworkError::InvalidChainId {
                network: echo(network),
            }),
        }
    }

    /// The v2 network id, `eip155:<chainId>`.
    pub fn to_caip2(self) -> String {
        format!("{EIP155}:{}", self.0)
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Splits a CAIP-2 chain id into namespace and reference, checking the syntax of CAIP-2:
/// namespace `[-a-z0-9]{3,8}`, reference `[-_a-zA-Z0-9]{1,32}`.
pub fn split_caip2(network: &str) -> Result<(&str, &str), NetworkError> {
    let not_caip2 = || NetworkError::NotCaip2 {
        network: echo(network),
    };
    let (namespace, reference) = network.split_once(':').ok_or_else(not_caip2)?;
    let namespace_ok = (3..=8).contains(&namespace.len())
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let reference_ok = (1..=32).contains(&reference.len())
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if namespace_ok && reference_ok {
        Ok((namespace, reference))
    } else {
        Err(not_caip2())
    }
}

/// The EVM names of the official v1 SDK with their chain ids (the closed network enum of
/// `x402` 1.x, `legacy/x402/src/types/shared/network.ts`).
pub const BUILTIN_V1_NETWORKS: &[(&str, u64)] = &[
    ("abstract", 2741),
    ("abstract-testnet", 11124),
    ("base-sepolia", 84532),
    ("base", 8453),
    ("avalanche-fuji", 43113),
    ("avalanche", 43114),
    ("iotex", 4689),
    ("sei", 1329),
    ("sei-testnet", 1328),
    ("polygon", 137),
    ("polygon-amoy", 80002),
    ("peaq", 3338),
    ("story", 1514),
    ("educhain", 41923),
    ("skale-base-sepolia", 324705682),
];

/// v1 network names and their chain ids. [`Default`] is [`NetworkRegistry::builtin`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkRegistry {
    by_name: BTreeMap<String, ChainId>,
    /// The first name added for each chain: the one a v1 `/supported` kind advertises.
    by_chain: BTreeMap<ChainId, String>,
}

impl Default for NetworkRegistry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl NetworkRegistry {
    /// No names at all: v1 then resolves nothing; v2 still works.
    pub fn empty() -> Self {
        NetworkRegistry {
            by_name: BTreeMap::new(),
            by_chain: BTreeMap::new(),
        }
    }

    /// The names of [`BUILTIN_V1_NETWORKS`].
    pub fn builtin() -> Self {
        let mut registry = Self::empty();
        for &(name, id) in BUILTIN_V1_NETWORKS {
            #[allow(
                clippy::expect_used,
                reason = "a constant table; registry_knows_builtin_names_and_takes_more builds it"
            )]
            registry
                .add(name, ChainId(id))
                .expect("the built-in network names are valid and distinct");
        }
        registry
    }

    /// Adds a v1 name, e.g. from the node's configuration. A name is 1 to 64 characters of
    /// `[a-z0-9-]`. Adding a name again with the same chain is a no-op; with another chain it is
    /// [`NetworkError::Conflict`] (a built-in name cannot be redirected). A chain may have several
    /// names; [`NetworkRegistry::name_of`] gives the first one added.
    pub fn add(&mut self, name: &str, chain: ChainId) -> Result<(), NetworkError> {
        let valid = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(NetworkError::InvalidName { name: echo(name) });
        }
        match self.by_name.get(name) {
            Some(&existing) if existing == chain => return Ok(()),
            Some(&existing) => {
                return Err(NetworkError::Conflict {
                    name: name.to_owned(),
                    existing,
                    requested: chain,
                })
            }
            None => {}
        }
        self.by_name.insert(name.to_owned(), chain);
        self.by_chain
            .entry(chain)
            .or_insert_with(|| name.to_owned());
        Ok(())
    }

    /// [`NetworkRegistry::add`] for each `(name, chain id)`, e.g. a `[networks]` table of the
    /// node's configuration. Stops at the first error.
    pub fn extend<I, S>(&mut self, names: I) -> Result<(), NetworkError>
    where
        I: IntoIterator<Item = (S, u64)>,
        S: AsRef<str>,
    {
        names
            .into_iter()
            .try_for_each(|(name, id)| self.add(name.as_ref(), ChainId(id)))
    }

    /// The chain of a v1 network name.
    pub fn chain_id(&self, name: &str) -> Result<ChainId, NetworkError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| NetworkError::UnknownName { name: echo(name) })
    }

    /// The v1 name of a chain, if it has one.
    pub fn name_of(&self, chain: ChainId) -> Option<&str> {
        self.by_chain.get(&chain).map(String::as_str)
    }

    /// Resolves the `network` of a message of the given x402 version: a v1 name or a v2
    /// CAIP-2 id.
    pub fn resolve(&self, x402_version: u8, network: &str) -> Result<ChainId, NetworkError> {
        match x402_version {
            1 => self.chain_id(network),
            _ => ChainId::from_caip2(network),
        }
    }

    /// Every `(name, chain)`, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, ChainId)> {
        self.by_name.iter().map(|(name, &id)| (name.as_str(), id))
    }
}

/// Why a network id does not name a chain this facilitator can serve.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "network {network:?} is not a CAIP-2 id: x402 v2 expects namespace:reference such as \
         \"eip155:8453\" (names such as \"base\" belong to x402Version 1)"
    )]
    NotCaip2 { network: String },
    #[error(
        "network {network:?} is in namespace {namespace:?}: this facilitator supports only EVM \
         chains, written eip155:<chainId>"
    )]
    UnsupportedNamespace { network: String, namespace: String },
    #[error(
        "network {network:?}: the chain id must be a positive decimal integer without leading \
         zeros that fits in 64 bits"
    )]
    InvalidChainId { network: String },
    #[error(
        "unknown x402 v1 network name {name:?} (v1 uses names such as \"base-sepolia\"; other \
         chains must be added to the facilitator's network list)"
    )]
    UnknownName { name: String },
    #[error("invalid network name {name:?}: use 1 to 64 characters of a-z, 0-9 and '-'")]
    InvalidName { name: String },
    #[error(
        "network name {name:?} already means chain {existing}, cannot add it for chain {requested}"
    )]
    Conflict {
        name: String,
        existing: ChainId,
        requested: ChainId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caip2_round_trip_and_errors() {
        assert_eq!(ChainId::from_caip2("eip155:84532"), Ok(ChainId(84532)));
        assert_eq!(ChainId(31337).to_caip2(), "eip155:31337");
        assert!(matches!(
            ChainId::from_caip2("solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"),
            Err(NetworkError::UnsupportedNamespace { .. })
        ));
        for bad in [
            "base-sepolia",
            "eip155",
            ":1",
            "EIP155:1",
            "ei:1",
            "eip155:",
            "x:y:z",
        ] {
            assert!(
                matches!(ChainId::from_caip2(bad), Err(NetworkError::NotCaip2 { .. })),
                "{bad}"
            );
        }
        for bad in [
            "eip155:0",
            "eip155:01",
            "eip155:abc",
            "eip155:99999999999999999999",
        ] {
            assert!(
                matches!(
                    ChainId::from_caip2(bad),
                    Err(NetworkError::InvalidChainId { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn registry_knows_builtin_names_and_takes_more() {
        let mut reg = NetworkRegistry::builtin();
        assert_eq!(reg.chain_id("base-sepolia"), Ok(ChainId(84532)));
        assert_eq!(reg.chain_id("base"), Ok(ChainId(8453)));
        assert_eq!(reg.chain_id("avalanche-fuji"), Ok(ChainId(43113)));
        assert_eq!(reg.name_of(ChainId(84532)), Some("base-sepolia"));
        assert!(matches!(
            reg.chain_id("anvil"),
            Err(NetworkError::UnknownName { .. })
        ));
        reg.extend([("anvil", 31337), ("local", 31337)]).unwrap();
        assert_eq!(reg.chain_id("local"), Ok(ChainId(31337)));
        assert_eq!(reg.name_of(ChainId(31337)), Some("anvil"));
        reg.add("anvil", ChainId(31337)).unwrap();
        assert!(matches!(
            reg.add("base", ChainId(1)),
            Err(NetworkError::Conflict { .. })
        ));
        assert!(matches!(
            reg.add("Anvil", ChainId(1)),
            Err(NetworkError::InvalidName { .. })
        ));
        assert!(matches!(
            reg.add("eip155:1", ChainId(1)),
            Err(NetworkError::InvalidName { .. })
        ));
        assert_eq!(reg.resolve(1, "base"), Ok(ChainId(8453)));
        assert_eq!(reg.resolve(2, "eip155:8453"), Ok(ChainId(8453)));
        assert!(reg.resolve(2, "base").is_err());
        assert!(reg.resolve(1, "eip155:8453").is_err());
        assert_eq!(NetworkRegistry::empty().iter().count(), 0);
    }
}
