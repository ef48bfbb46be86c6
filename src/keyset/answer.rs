//! Reading a key-service answer: a full set or a delta on top of the published one.

use super::*;
#[derive(Debug)]
pub enum Fetched {
    /// Same version as the one already published: nothing to do.
    Unchanged,
    Set(ParsedSet),
    /// Changes on top of the published version `since` (SPEC §4 delta answers).
    Delta(Delta),
}

/// A delta answer `{"version","since","upserts":[…],"removed":[ids…]}`, validated.
#[derive(Debug)]
pub struct Delta {
    pub version: String,
    pub since: String,
    /// The upserted entries, encoded (as a small set of their own).
    pub upserts: ParsedSet,
    /// Ids to drop: the removed ones and the upserted ones (their old records give way).
    pub drop_ids: FastSet<String>,
}

impl Delta {
    /// Starts the new set: feed it the published set's records with
    /// [`Applying::old_record`], then [`Applying::finish`].
    pub fn start(self, old_count: usize) -> Applying {
        let set = ParsedSet::for_keys(old_count + self.upserts.len());
        Applying { delta: self, set }
    }
}

/// A delta being applied to the published set.
pub struct Applying {
    delta: Delta,
    set: ParsedSet,
}

impl Applying {
    /// A record of the published set: kept unless its id is removed or upserted.
    pub fn old_record(&mut self, rec: &[u8]) {
        if record_id(rec).is_some_and(|id| !self.delta.drop_ids.contains(id)) {
            self.set.push_encoded(rec);
        }
    }

    /// The new set: the kept records and the upserts.
    pub fn finish(mut self) -> Result<ParsedSet, Vec<ConfigError>> {
        for buf in &self.delta.upserts.shards {
            for rec in records_of(buf) {
                self.set.push_encoded(rec);
            }
        }
        if self.set.has_duplicate_digest() {
            return Err(vec![ConfigError {
                path: "$.upserts".into(),
                message: "an upserted key (hash) is already in the set under another id".into(),
            }]);
        }
        self.set.version = self.delta.version;
        Ok(self.set)
    }
}

struct Parse<'g> {
    gate: &'g Gate,
    ctx: KeyContext<'g>,
    /// Inline ids (a map, not a set: the same map type as the metric ids', one instance).
    inline_ids: FastMap<&'g str, u32>,
    current: Option<&'g str>,
    version: Option<String>,
    unchanged: bool,
    saw_keys: bool,
    /// A delta answer: the version it applies to, and the ids it removes.
    since: Option<String>,
    removed: Option<Vec<String>>,
    saw_upserts: bool,
    set: ParsedSet,
    /// (hash of the id, entry index): sorted afterwards to find duplicate ids.
    ids: Vec<(u64, u32)>,
    errors: Errors,
}

/// FNV-1a of the id: as collision-free as SipHash for ids (64 bits either way) and several
/// times cheaper per entry of a million-key answer.
pub(super) fn id_hash(id: &str) -> u64 {
    crate::keys::fnv(id.as_bytes())
}

impl Parse<'_> {
    fn error(&mut self, path: &str, msg: impl Into<String>) {
        if self.errors.0.len() < MAX_ERRORS {
            self.errors.push(path, msg);
        }
    }

    fn entry(&mut self, field: &str, i: usize, value: &Value) {
        let mut errors = Errors::default();
        // The entry's own path is formatted only when it has something to report (a million
        // entries, almost always none): the read is repeated with it.
        let parsed = read_key_entry("$", value, &self.ctx, &mut errors);
        let path = || format!("$.{field}[{i}]");
        if !errors.is_empty() {
            let mut errors = Errors::default();
            read_key_entry(&path(), value, &self.ctx, &mut errors);
            for e in errors.0 {
                self.error(&e.path, e.message);
            }
        }
        let Some((digest, rec)) = parsed else { return };
        if self.inline_ids.contains_key(rec.id.as_str()) {
            return self.error(
                &format!("{}.id", path()),
                format!("id {} is also configured inline", q(&rec.id)),
            );
        }
        if self.gate.keys.get(&digest).is_some() {
            return self.error(&path(), "this key is also configured inline");
        }
        self.ids.push((id_hash(&rec.id), i as u32));
        self.set.push(&digest, &rec, &self.gate.roles);
    }
}

pub(super) const VERSION_RULE: &str =
    "must be 1-256 printable ASCII characters without spaces or '\"'";

/// A set's version is sent back in If-None-Match, so it must be a valid header token.
pub(super) fn valid_version(v: &str) -> bool {
    !v.is_empty() && v.len() <= 256 && v.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'"')
}

/// Two entries with the same id: their indexes (first, second). Ids are compared by a 64-bit
/// hash: two different ids colliding (odds ~3e-8 for a million ids) would be reported as a
/// duplicate and the answer refused, never merged.
pub(super) fn duplicate_id(ids: &mut [(u64, u32)]) -> Option<(u32, u32)> {
    crate::keys::sort_numbered(ids);
    let w = ids
        .windows(2)
        .find(|w| w.first().map(|x| x.0) == w.get(1).map(|x| x.0))?;
    Some((w.first().map_or(0, |x| x.1), w.get(1).map_or(0, |x| x.1)))
}

const TOP_EXPECTED: &str = "expected an object {\"version\": …, \"keys\": […]}";
const KEYS_EXPECTED: &str = "expected an array of key entries";
const TOP_FIELDS: [&str; 5] = ["version", "keys", "since", "upserts", "removed"];

/// A fatal problem with the answer's shape, or its JSON syntax.
enum Fatal {
    Syntax(SyntaxError),
    Shape(&'static str),
}

impl From<SyntaxError> for Fatal {
    fn from(e: SyntaxError) -> Fatal {
        Fatal::Syntax(e)
    }
}

impl Parse<'_> {
    /// The top-level object, field by field.
    fn top(&mut self, p: &mut Parser) -> Result<(), Fatal> {
        if !p.next_is(b'{')? {
            return Err(Fatal::Shape(TOP_EXPECTED));
        }
        let mut first = true;
        // The known fields seen, one bit each (unknown ones are errors whatever their number:
        // a list of names seen would make a hostile answer quadratic).
        let mut seen = 0u8;
        while let Some(k) = p.next_field(&mut first)? {
            let bit = TOP_FIELDS
                .iter()
                .position(|f| *f == k)
                .map_or(0, |i| 1u8 << i);
            if seen & bit != 0 {
                self.error(&format!("$.{k}"), "appears twice");
                p.skip()?;
                continue;
            }
            seen |= bit;
            match k.as_ref() {
                "version" => match p.value()? {
                    Value::String(v) if !valid_version(&v) => self.error("$.version", VERSION_RULE),
                    Value::String(v) => {
                        if !self.saw_keys && self.current == Some(v.as_str()) {
                            self.unchanged = true;
                        }
                        self.version = Some(v);
                    }
                    _ => self.error("$.version", "expected a string"),
                },
                "keys" if self.unchanged => {
                    p.skip()?;
                    self.saw_keys = true;
                }
                "keys" | "upserts" => {
                    let field = if k == "keys" { "keys" } else { "upserts" };
                    self.entries(p, field)?;
                    if field == "keys" {
                        self.saw_keys = true;
                    } else {
                        self.saw_upserts = true;
                    }
                }
                "since" => match p.value()? {
                    Value::String(v) => self.since = Some(v),
                    _ => self.error("$.since", "expected a string"),
                },
                "removed" => match p.value()? {
                    Value::Array(ids) => {
                        let mut out = Vec::with_capacity(ids.len());
                        for (i, id) in ids.into_iter().enumerate() {
                            match id {
                                Value::String(id) => out.push(id),
                                _ => self.error(&format!("$.removed[{i}]"), "expected an id"),
                            }
                        }
                        self.removed = Some(out);
                    }
                    _ => self.error("$.removed", "expected an array of ids"),
                },
                other => {
                    self.error(&format!("$.{other}"), "unknown field");
                    p.skip()?;
                }
            }
        }
        Ok(())
    }

    /// The entries of `keys` or of a delta's `upserts`, one at a time: a million-key answer
    /// is never held as a JSON tree.
    fn entries(&mut self, p: &mut Parser, field: &'static str) -> Result<(), Fatal> {
        if !p.next_is(b'[')? {
            return Err(Fatal::Shape(KEYS_EXPECTED));
        }
        let mut first = true;
        let mut i = 0;
        while p.next_item(&mut first)? {
            let v = p.value()?;
            self.entry(field, i, &v);
            i += 1;
        }
        Ok(())
    }
}

/// Reads and validates a key-service answer `{"version":"…","keys":[…]}` from `reader`,
/// entries exactly as inline `keys`. `current` is the published version: if the answer has the
/// same version (and says so before its keys), the keys are skipped, not parsed.
/// Any error rejects the whole answer.
pub fn parse_key_set(
    reader: &mut dyn Source,
    size: usize,
    gate: &Gate,
    current: Option<&str>,
) -> Result<Fetched, Vec<ConfigError>> {
    let mut p = Parse {
        gate,
        ctx: KeyContext {
            roles: &gate.roles,
            prefixes: &gate.prefixes,
        },
        inline_ids: gate.keys.records().map(|r| (r.id.as_str(), 0)).collect(),
        current,
        version: None,
        unchanged: false,
        saw_keys: false,
        since: None,
        removed: None,
        saw_upserts: false,
        set: ParsedSet::for_body_size(size),
        ids: Vec::new(),
        errors: Errors::default(),
    };
    let mut parser = Parser::new(reader);
    let parsed = p.top(&mut parser).and_then(|()| Ok(parser.end()?));
    if let Err(e) = parsed {
        let message = match e {
            Fatal::Syntax(e) => format!("not a valid key-set answer: {e}"),
            Fatal::Shape(what) => format!("not a valid key-set answer: {what}"),
        };
        let mut errors = vec![ConfigError {
            path: "$".into(),
            message,
        }];
        errors.extend(p.errors.0);
        return Err(errors);
    }
    if p.version.is_none() {
        p.errors.push("$.version", "is required");
    }
    let delta = p.since.is_some() || p.saw_upserts || p.removed.is_some();
    match (delta, p.saw_keys) {
        (true, true) => p
            .errors
            .push("$", "has both \"keys\" and delta fields; give one"),
        (true, false) if p.since.is_none() => p.errors.push("$.since", "is required in a delta"),
        (false, false) => p.errors.push("$.keys", "is required"),
        _ => {}
    }
    if !p.errors.is_empty() {
        return Err(p.errors.0);
    }
    let version = p.version.unwrap_or_default();
    if current == Some(version.as_str()) {
        return Ok(Fetched::Unchanged);
    }
    if let Some((first, second)) = duplicate_id(&mut p.ids) {
        let field = if delta { "upserts" } else { "keys" };
        return Err(vec![ConfigError {
            path: format!("$.{field}[{second}].id"),
            message: format!("duplicate id (the same as $.{field}[{first}].id)"),
        }]);
    }
    if p.set.has_duplicate_digest() {
        return Err(vec![ConfigError {
            path: "$.keys".into(),
            message: "duplicate key: the same key (hash) appears twice".into(),
        }]);
    }
    if delta {
        let mut drop_ids: FastSet<String> = p.removed.unwrap_or_default().into_iter().collect();
        for buf in &p.set.shards {
            drop_ids.extend(records_of(buf).filter_map(record_id).map(str::to_string));
        }
        return Ok(Fetched::Delta(Delta {
            version,
            since: p.since.unwrap_or_default(),
            upserts: p.set,
            drop_ids,
        }));
    }
    let mut set = p.set;
    set.version = version;
    Ok(Fetched::Set(set))
}
