//! Image references, normalized by docker's rules as containerd's
//! `reference.ParseDockerRef` does: a default registry (`docker.io`), the `library/`
//! prefix for official images, the `latest` tag when none is given, and only the digest
//! when both a tag and a digest are.

use super::ImageError;

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Normalizes an image reference to its full form, e.g. `busybox` to
/// `docker.io/library/busybox:latest`, `foo/bar` to `docker.io/foo/bar:latest`,
/// `localhost:5000/x` to `localhost:5000/x:latest`, `x:1@sha256:...` to
/// `docker.io/library/x@sha256:...`.
///
/// # Errors
/// [`ImageError::InvalidReference`] when `s` is not a valid reference: empty, a bare
/// 64-hex image ID, an upper-case repository, a malformed tag, domain or digest.
pub fn normalize_reference(s: &str) -> Result<String, ImageError> {
    let invalid = |reason| ImageError::InvalidReference {
        reference: s.to_owned(),
        reason,
    };
    if s.is_empty() {
        return Err(invalid("empty reference"));
    }
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            "a 64-character hexadecimal string is an image ID, not a repository name",
        ));
    }

    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (s, None),
    };
    if let Some(digest) = digest
        && !valid_digest(digest)
    {
        return Err(invalid("invalid digest"));
    }

    // The tag follows the last ':' that is not part of a registry's port.
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag
        && !valid_tag(tag)
    {
        return Err(invalid("invalid tag"));
    }

    let (domain, path) = split_domain(name);
    if !valid_domain(domain) {
        return Err(invalid("invalid registry domain"));
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid("repository name must be lowercase"));
    }
    if path.is_empty() || !path.split('/').all(valid_path_component) {
        return Err(invalid("invalid repository name"));
    }
    let repository = format!("{domain}/{path}");
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(invalid("repository name longer than 255 characters"));
    }

    Ok(match (digest, tag) {
        (Some(digest), _) => format!("{repository}@{digest}"),
        (None, Some(tag)) => format!("{repository}:{tag}"),
        (None, None) => format!("{repository}:latest"),
    })
}

/// Splits `name` into registry and path as docker does: the first component is a
/// registry when it looks like a host (has a `.` or `:`, is `localhost`, or has
/// upper-case letters, which repository paths never have).
fn split_domain(name: &str) -> (&str, std::borrow::Cow<'_, str>) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DEFAULT_DOMAIN, name),
    };
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN
    } else {
        domain
    };
    if domain == DEFAULT_DOMAIN && !path.contains('/') {
        (domain, format!("{OFFICIAL_REPO_PREFIX}{path}").into())
    } else {
        (domain, path.into())
    }
}

/// `domain-component ('.' domain-component)* (':' port)?`
fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// `[a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// A digest of an algorithm containerd knows, in lower-case hex of the right length.
pub(crate) fn valid_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalizes_like_docker() {
        let cases: &[(&str, String)] = &[
            ("busybox", "docker.io/library/busybox:latest".into()),
            ("busybox:1.35", "docker.io/library/busybox:1.35".into()),
            ("foo/bar", "docker.io/foo/bar:latest".into()),
            ("foo/bar/baz:v1", "docker.io/foo/bar/baz:v1".into()),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "docker.io/library/busybox:1",
                "docker.io/library/busybox:1".into(),
            ),
            ("localhost/x", "localhost/x:latest".into()),
            ("localhost:5000/x", "localhost:5000/x:latest".into()),
            ("localhost:5000/x:y", "localhost:5000/x:y".into()),
            (
                "registry.k8s.io/pause:3.10",
                "registry.k8s.io/pause:3.10".into(),
            ),
            (
                "nodelet.local/pause:3.10",
                "nodelet.local/pause:3.10".into(),
            ),
            ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000/a/b:c".into()),
            ("Example.com/x", "Example.com/x:latest".into()),
            (
                "a.b-c/d__e/e_f.g--h:Tag_1.0-x",
                "a.b-c/d__e/e_f.g--h:Tag_1.0-x".into(),
            ),
            (
                &format!("busybox@{D}"),
                format!("docker.io/library/busybox@{D}"),
            ),
            (
                &format!("busybox:1.35@{D}"),
                format!("docker.io/library/busybox@{D}"),
            ),
            (
                &format!("localhost:5000/x@{D}"),
                format!("localhost:5000/x@{D}"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize_reference(input).ok().as_ref(),
                Some(want),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_invalid() {
        let long = format!("example.com/{}", "a".repeat(250));
        let bad = [
            "",
            "Busybox",
            "foo/Bar",
            "busybox:",
            "busybox:-x",
            "busybox:a/b",
            "busy box",
            "-foo/bar",
            "foo/bar-",
            "foo//bar",
            "foo/bar/",
            "foo_.bar",
            "example.com:/x",
            "a_b.com/x",
            "example.com:x1/x",
            "-example.com/x",
            "busybox@sha256:abc",
            "busybox@md5:e3b0c44298fc1c149afbf4c8996fb924",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            &long,
        ];
        for input in bad {
            assert!(
                matches!(
                    normalize_reference(input),
                    Err(ImageError::InvalidReference { .. })
                ),
                "{input:?} should be rejected, got {:?}",
                normalize_reference(input)
            );
        }
    }
}
