//! The policy as a bucket lifecycle configuration: the body of S3's (and R2's)
//! `PutBucketLifecycleConfiguration` (`PUT /{bucket}?lifecycle`). What a provider cannot do —
//! recompression — is listed as sweeper-only, in an XML comment and in [`sweeper_only`].

use std::fmt::Write as _;

use crate::policy::Policy;

/// The storage class of the Infrequent Access tier (R2 accepts the S3 name).
pub const INFREQUENT_ACCESS_CLASS: &str = "STANDARD_IA";

/// The ID of the rule that aborts incomplete multipart uploads.
pub const ABORT_MULTIPART_RULE_ID: &str = "abort-incomplete-multipart";

/// Actions only the sweeper can take, one line each (`artifacts/: recompress text at zstd 19
/// after 30 days`).
pub fn sweeper_only(policy: &Policy) -> Vec<String> {
    policy
        .rules
        .values()
        .filter_map(|rule| {
            rule.recompress_after_days.map(|days| {
                format!(
                    "{}: recompress text at zstd {} after {days} days",
                    rule.prefix,
                    policy.recompress_level.get()
                )
            })
        })
        .collect()
}

/// The `LifecycleConfiguration` XML document. Rules with no provider action (only
/// recompression, or nothing at all) are left out; deterministic, so `plan` output can be
/// diffed and the body's MD5 is stable.
pub fn bucket_lifecycle_xml(policy: &Policy) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str("<LifecycleConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\n");
    let only = sweeper_only(policy);
    if !only.is_empty() {
        out.push_str("  <!-- sweeper-only (`cognomega lifecycle sweep`; no provider can do it):\n");
        for line in &only {
            let _ = writeln!(out, "       {}", comment_safe(line));
        }
        out.push_str("  -->\n");
    }
    for (name, rule) in &policy.rules {
        if rule.infrequent_access_after_days.is_none() && rule.delete_after_days.is_none() {
            continue;
        }
        out.push_str("  <Rule>\n");
        let _ = writeln!(out, "    <ID>{}</ID>", escape(name));
        let _ = writeln!(
            out,
            "    <Filter><Prefix>{}</Prefix></Filter>",
            escape(&rule.prefix)
        );
        out.push_str("    <Status>Enabled</Status>\n");
        if let Some(days) = rule.infrequent_access_after_days {
            let _ = writeln!(
                out,
                "    <Transition><Days>{days}</Days><StorageClass>{INFREQUENT_ACCESS_CLASS}</StorageClass></Transition>"
            );
        }
        if let Some(days) = rule.delete_after_days {
            let _ = writeln!(out, "    <Expiration><Days>{days}</Days></Expiration>");
        }
        out.push_str("  </Rule>\n");
    }
    if let Some(days) = policy.abort_incomplete_multipart_after_days {
        out.push_str("  <Rule>\n");
        let _ = writeln!(out, "    <ID>{ABORT_MULTIPART_RULE_ID}</ID>");
        out.push_str("    <Filter><Prefix></Prefix></Filter>\n");
        out.push_str("    <Status>Enabled</Status>\n");
        let _ = writeln!(
            out,
            "    <AbortIncompleteMultipartUpload><DaysAfterInitiation>{days}</DaysAfterInitiation></AbortIncompleteMultipartUpload>"
        );
        out.push_str("  </Rule>\n");
    }
    out.push_str("</LifecycleConfiguration>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// `--` may not appear inside an XML comment.
fn comment_safe(text: &str) -> String {
    text.replace("--", "- -")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_renders_every_provider_rule() {
        let xml = bucket_lifecycle_xml(&Policy::default());
        let expected = "\
<?xml version=\"1.0\" encoding=\"UTF-8\"?>
<LifecycleConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">
  <!-- sweeper-only (`cognomega lifecycle sweep`; no provider can do it):
       artifacts/: recompress text at zstd 19 after 30 days
  -->
  <Rule>
    <ID>artifacts</ID>
    <Filter><Prefix>artifacts/</Prefix></Filter>
    <Status>Enabled</Status>
    <Transition><Days>60</Days><StorageClass>STANDARD_IA</StorageClass></Transition>
    <Expiration><Days>90</Days></Expiration>
  </Rule>
  <Rule>
    <ID>exports</ID>
    <Filter><Prefix>exports/</Prefix></Filter>
    <Status>Enabled</Status>
    <Transition><Days>30</Days><StorageClass>STANDARD_IA</StorageClass></Transition>
  </Rule>
  <Rule>
    <ID>quarantine</ID>
    <Filter><Prefix>quarantine/</Prefix></Filter>
    <Status>Enabled</Status>
    <Expiration><Days>30</Days></Expiration>
  </Rule>
  <Rule>
    <ID>uploads</ID>
    <Filter><Prefix>uploads/</Prefix></Filter>
    <Status>Enabled</Status>
    <Transition><Days>30</Days><StorageClass>STANDARD_IA</StorageClass></Transition>
    <Expiration><Days>90</Days></Expiration>
  </Rule>
  <Rule>
    <ID>abort-incomplete-multipart</ID>
    <Filter><Prefix></Prefix></Filter>
    <Status>Enabled</Status>
    <AbortIncompleteMultipartUpload><DaysAfterInitiation>7</DaysAfterInitiation></AbortIncompleteMultipartUpload>
  </Rule>
</LifecycleConfiguration>
";
        assert_eq!(xml, expected);
    }

    #[test]
    fn sweeper_only_rules_are_listed_and_not_sent() {
        let text = r#"{"recompress_level": 12, "abort_incomplete_multipart_after_days": null,
            "rules": {"artifacts": {"prefix": "artifacts/", "recompress_after_days": 5}}}"#;
        let policy = Policy::from_text(text, true).unwrap();
        assert_eq!(
            sweeper_only(&policy),
            ["artifacts/: recompress text at zstd 12 after 5 days"]
        );
        let xml = bucket_lifecycle_xml(&policy);
        assert!(!xml.contains("<ID>artifacts</ID>"), "{xml}");
        assert!(xml.contains("zstd 12"), "{xml}");
        assert!(!xml.contains(ABORT_MULTIPART_RULE_ID), "{xml}");
    }
}
