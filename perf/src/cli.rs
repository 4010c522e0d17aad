//! A small flag parser: `--key value` and `--flag`, nothing else. Every flag a command
//! does not take is refused by name, so a typo cannot silently change a measurement.

use std::collections::BTreeMap;

pub struct Args {
    pub positional: Vec<String>,
    flags: BTreeMap<String, Option<String>>,
    used: std::cell::RefCell<Vec<String>>,
}

/// Flags that take no value.
const SWITCHES: [&str; 6] = [
    "no-check",
    "no-provision",
    "quiet",
    "keep",
    "start-gateway",
    "closed-loop",
];

impl Args {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut positional = Vec::new();
        let mut flags = BTreeMap::new();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                if let Some((k, v)) = name.split_once('=') {
                    flags.insert(k.to_string(), Some(v.to_string()));
                } else if SWITCHES.contains(&name) {
                    flags.insert(name.to_string(), None);
                } else {
                    let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                    flags.insert(name.to_string(), Some(v));
                }
            } else {
                positional.push(a);
            }
        }
        Ok(Args {
            positional,
            flags,
            used: Default::default(),
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.used.borrow_mut().push(key.to_string());
        self.flags.get(key).and_then(|v| v.as_deref())
    }

    pub fn has(&self, key: &str) -> bool {
        self.used.borrow_mut().push(key.to_string());
        self.flags.contains_key(key)
    }

    pub fn parsed<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("--{key}: cannot read {v:?}")),
        }
    }

    /// Refuses any flag no `get`/`has` asked about.
    pub fn finish(&self) -> Result<(), String> {
        let used = self.used.borrow();
        match self.flags.keys().find(|k| !used.contains(k)) {
            Some(k) => Err(format!("unknown flag --{k}")),
            None => Ok(()),
        }
    }
}
