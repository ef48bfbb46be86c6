//! `key_sources`: where keys are read from.

use super::fields::*;
use crate::json_reader::{index, q, Errors, Obj};
use crate::keys::FastSet;
use crate::model::*;

pub(super) fn read_sources(root: &mut Obj, errors: &mut Errors) -> Vec<KeySource> {
    let path = root.field_path("key_sources");
    let Some(items) = root.opt_array("key_sources", errors) else {
        if root.has("key_sources") {
            return Vec::new();
        }
        return [
            Source::Header {
                name: "x-api-key".into(),
                scheme: None,
            },
            Source::Header {
                name: "authorization".into(),
                scheme: Some("Bearer".into()),
            },
        ]
        .into_iter()
        .map(|from| KeySource { from, paths: None })
        .collect();
    };
    if items.is_empty() {
        errors.push(&path, "needs at least one key source");
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(&path, i);
        let Some(mut o) = Obj::new(&p, item, errors) else {
            continue;
        };
        let header = o.opt_str("header", errors);
        let query = o.opt_str("query", errors);
        let scheme = o.opt_str("scheme", errors);
        let paths = read_patterns(&mut o, "paths", errors);
        let push = |from| out.push(KeySource { from, paths });
        match (header, query) {
            (Some(h), None) => {
                let name = header_name(&o.field_path("header"), h, errors);
                let scheme = match scheme {
                    Some(s)
                        if s.is_empty()
                            || !s
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)) =>
                    {
                        errors.push(
                            &o.field_path("scheme"),
                            format!("{} is not a valid authentication scheme", q(s)),
                        );
                        None
                    }
                    s => s.map(str::to_string),
                };
                if let Some(name) = name {
                    push(Source::Header { name, scheme });
                }
            }
            (None, Some(q)) => {
                if scheme.is_some() {
                    errors.push(&o.field_path("scheme"), "applies only to header sources");
                }
                if q.is_empty()
                    || !q
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
                {
                    errors.push(
                        &o.field_path("query"),
                        format!(
                            "{} is not a valid query parameter name",
                            crate::json_reader::q(q)
                        ),
                    );
                } else {
                    push(Source::Query {
                        name: q.to_string(),
                    });
                }
            }
            (Some(_), Some(_)) => errors.push(&p, "has both \"header\" and \"query\"; give one"),
            (None, None) => errors.push(&p, "needs \"header\" or \"query\""),
        }
        o.finish(errors);
    }
    let mut seen = FastSet::default();
    for (i, s) in out.iter().enumerate() {
        if !seen.insert(s.from.clone()) {
            errors.push(&index(&path, i), "duplicate key source");
        }
    }
    out
}
