//! The alias budget: a serde visitor that walks YAML documents, following aliases,
//! without building anything, and stops once what they expand to crosses the limits.

use serde::de::{self, DeserializeSeed, Visitor};

use super::{Crossed, LimitError, MAX_MANIFEST_BYTES, MAX_NODES};

/// The budget of [`count_expanded`].
#[derive(Debug, Default)]
struct Budget {
    nodes: usize,
    text: usize,
    crossed: Option<LimitError>,
}

impl Budget {
    fn charge<E: de::Error>(&mut self, text: usize) -> Result<(), E> {
        self.nodes += 1;
        self.text = self.text.saturating_add(text);
        if self.nodes > MAX_NODES {
            self.crossed = Some(LimitError::AliasNodes);
        } else if self.text > MAX_MANIFEST_BYTES {
            self.crossed = Some(LimitError::AliasText);
        }
        match self.crossed {
            Some(limit) => Err(E::custom(limit)),
            None => Ok(()),
        }
    }
}

/// Walks every document of a YAML text through serde_yaml as a visitor that builds
/// nothing, following aliases, and stops once the nodes or the text they add up to
/// cross [`MAX_NODES`] or [`MAX_MANIFEST_BYTES`].
///
/// # Errors
/// `Err(Ok(crossed))` for a limit, `Err(Err(e))` for a YAML error met on the way
/// (the real parse would meet it too).
pub fn count_expanded(bytes: &[u8]) -> Result<(), Result<Crossed, serde_yaml::Error>> {
    let mut budget = Budget::default();
    for (document, de) in serde_yaml::Deserializer::from_slice(bytes).enumerate() {
        if let Err(e) = Count(&mut budget).deserialize(de) {
            return Err(match budget.crossed {
                Some(limit) => Ok(Crossed {
                    limit,
                    document,
                    at: e.location().map(|l| (l.line(), l.column())),
                }),
                None => Err(e),
            });
        }
    }
    Ok(())
}

struct Count<'b>(&'b mut Budget);

impl<'de> DeserializeSeed<'de> for Count<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Count<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.0.charge(0)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.0.charge(0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.0.charge(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.0.charge(0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.charge(v.len())
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<(), E> {
        self.0.charge(v.len())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.charge(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.0.charge(0)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.0.charge::<D::Error>(0)?;
        d.deserialize_any(Count(self.0))
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.0.charge::<D::Error>(0)?;
        d.deserialize_any(Count(self.0))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.charge::<A::Error>(0)?;
        while seq.next_element_seed(Count(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.charge::<A::Error>(0)?;
        while map.next_key_seed(Count(&mut *self.0))?.is_some() {
            map.next_value_seed(Count(&mut *self.0))?;
        }
        Ok(())
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use de::VariantAccess as _;
        self.0.charge::<A::Error>(0)?;
        let ((), variant) = data.variant_seed(Count(&mut *self.0))?;
        variant.newtype_variant_seed(Count(self.0))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn alias_expansion_is_budgeted() {
        let count = |text: &str| match count_expanded(text.as_bytes()) {
            Ok(()) => Ok(()),
            Err(Ok(crossed)) => Err(Ok(crossed.limit)),
            Err(Err(e)) => Err(Err(e.to_string())),
        };
        // Ten thousand aliases of a ten-thousand-element list: 10^8 nodes from
        // 50 KB, within serde_yaml's repetition limit.
        let wide = format!(
            "a: &a [{}x]\nb: [{}*a]\n",
            "x,".repeat(10_000),
            "*a,".repeat(10_000)
        );
        assert_eq!(count(&wide), Err(Ok(LimitError::AliasNodes)));
        let long = format!(
            "a: &a {}\nb: [{}*a]\n",
            "x".repeat(100_000),
            "*a,".repeat(100)
        );
        assert_eq!(count(&long), Err(Ok(LimitError::AliasText)));
        // Billion laughs: serde_yaml's own repetition limit or ours, never the memory.
        let mut laughs = String::from("a0: &a0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 9].join(",");
            laughs.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        assert!(count(&laughs).is_err());
        // Merge keys, the usual use of aliases, are fine.
        assert_eq!(count("x: &c {name: app}\ny:\n  <<: *c\n"), Ok(()));
    }
}
