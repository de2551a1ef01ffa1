//! Failures as the API server reports them: a `Status` object with an HTTP code, a reason and,
//! for invalid objects, the fields to blame.

use serde_json::{Value, json};

/// A failed request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `BadRequest`, `Forbidden`, ...
    pub reason: &'static str,
    pub message: String,
    /// `details`: the object's name and kind, and the causes of an `Invalid`.
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None }
    }

    /// `pods "x" not found`.
    pub fn not_found(resource: &str, name: &str) -> ApiError {
        let mut e = ApiError::new(404, "NotFound", format!("{resource} \"{name}\" not found"));
        e.details = Some(json!({"name": name, "kind": kind_of(resource)}));
        e
    }

    pub fn already_exists(resource: &str, name: &str) -> ApiError {
        let mut e = ApiError::new(409, "AlreadyExists", format!("{resource} \"{name}\" already exists"));
        e.details = Some(json!({"name": name, "kind": kind_of(resource)}));
        e
    }

    /// An update made against an older version of the object.
    pub fn conflict(resource: &str, name: &str) -> ApiError {
        let mut e = ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
        e.details = Some(json!({"name": name, "kind": kind_of(resource)}));
        e
    }

    /// `Pod "x" is invalid: spec.containers: Required value`, with each field as a cause.
    pub fn invalid(kind: &str, name: &str, causes: &[(String, String)]) -> ApiError {
        let listed: Vec<String> =
            causes.iter().map(|(field, message)| format!("{field}: {message}")).collect();
        let message = match listed.as_slice() {
            [one] => format!("{kind} \"{name}\" is invalid: {one}"),
            many => format!("{kind} \"{name}\" is invalid: [{}]", many.join(", ")),
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(
                |(field, message)| json!({"reason": "FieldValueInvalid", "message": message, "field": field}),
            )
            .collect();
        let mut e = ApiError::new(422, "Invalid", message);
        e.details = Some(json!({"name": name, "kind": kind, "causes": causes}));
        e
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "Forbidden", message)
    }

    /// The `Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// `pods` → `pods`, `networkpolicies.networking.k8s.io` → `networkpolicies` (the details' kind
/// is the resource, as the API server writes it there).
fn kind_of(resource: &str) -> &str {
    resource.split('.').next().unwrap_or(resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_like_the_api_servers() {
        assert_eq!(ApiError::not_found("pods", "x").message, "pods \"x\" not found");
        let invalid = ApiError::invalid(
            "Pod",
            "x",
            &[
                ("spec.containers".into(), "Required value".into()),
                ("metadata.name".into(), "Invalid value".into()),
            ],
        );
        assert_eq!(
            invalid.message,
            "Pod \"x\" is invalid: [spec.containers: Required value, metadata.name: Invalid value]"
        );
        let status = invalid.to_status();
        assert_eq!((status["code"].as_u64(), status["reason"].as_str()), (Some(422), Some("Invalid")));
        assert_eq!(status["details"]["causes"][0]["field"], "spec.containers");
    }
}
