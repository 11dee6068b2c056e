//! Where two JSON values differ: how a continued run names the first
//! setting that is not what it was.

use serde_json::Value;

/// The first place, in key order, where `a` and `b` differ, as a dotted
/// path below `path` (`(root)` for the values themselves); `None` when they
/// are equal. A key present on one side only is a difference.
pub fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => first_difference(u, v, &sub),
                    _ => Some(sub),
                }
            })
        }
        _ if a == b => None,
        _ => Some(if path.is_empty() {
            "(root)".into()
        } else {
            path.into()
        }),
    }
}

/// The value at a dotted `path` of `v` (as [`first_difference`] names it),
/// or `null` where there is none.
pub fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .unwrap_or(&Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_first_differing_key() {
        let a = json!({"data": {"dataset": "svhn", "max_train": 10}, "seed": 1});
        let mut b = a.clone();
        assert_eq!(first_difference(&a, &b, ""), None);
        b["data"]["max_train"] = json!(20);
        b["seed"] = json!(2);
        assert_eq!(
            first_difference(&a, &b, "").as_deref(),
            Some("data.max_train")
        );
        assert_eq!(at(&b, "data.max_train"), &json!(20));
        b["data"].as_object_mut().unwrap().remove("max_train");
        assert_eq!(
            first_difference(&a, &b, "").as_deref(),
            Some("data.max_train")
        );
        assert_eq!(at(&b, "data.max_train"), &Value::Null);
        assert_eq!(
            first_difference(&json!(1), &json!(2), "").as_deref(),
            Some("(root)")
        );
    }
}
