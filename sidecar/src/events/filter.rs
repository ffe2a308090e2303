//! Which events a reader gets: the types it asked for (`stream-events -s TYPE`) and, for a
//! stream consumer restricted to some projects (`[event "consumer NAME"] project`), the
//! projects it may see. Every reader of the log applies the same filter, whether it reads a
//! page of the log or the ring of recent records.
//!
//! An event's project is read from its JSON only when a project filter is set: `project` (a
//! string, or an object with `name`, as older servers sent), else `projectName`
//! (`project-created`, `project-head-updated`), else `refUpdate.project` (`ref-updated`), else
//! `change.project`. An event with no project (Gerrit's non-project events) is shown to every
//! consumer, as Gerrit's event broker shows it to every user.

use std::sync::Arc;

use serde::Deserialize;

/// The projects a consumer may see: a project is visible when one regex matches all of it.
#[derive(Debug)]
pub struct ProjectFilter {
    anchored: Vec<regex::Regex>,
    patterns: Vec<String>,
}

impl ProjectFilter {
    /// Compiles each pattern anchored at both ends (`tools/.*` matches `tools/gerrit`, not
    /// `x/tools/y`); the error names the pattern.
    pub fn new<I, S>(patterns: I) -> Result<ProjectFilter, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let patterns: Vec<String> = patterns.into_iter().map(Into::into).collect();
        let anchored = patterns
            .iter()
            .map(|p| {
                regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| format!("`{p}` is not a regular expression: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(ProjectFilter { anchored, patterns })
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether an event of `project` (`None`: the event names none) is visible.
    pub fn admits(&self, project: Option<&str>) -> bool {
        match project {
            None => true,
            Some(p) => self.anchored.iter().any(|r| r.is_match(p)),
        }
    }
}

/// Which events a reader wants: types (empty = all) and, for a restricted consumer, projects.
#[derive(Debug, Clone, Default)]
pub struct TypeFilter {
    types: Vec<String>,
    projects: Option<Arc<ProjectFilter>>,
}

impl PartialEq for TypeFilter {
    fn eq(&self, other: &Self) -> bool {
        self.types == other.types
            && self.projects.as_ref().map(|p| p.patterns())
                == other.projects.as_ref().map(|p| p.patterns())
    }
}

impl TypeFilter {
    pub fn all() -> Self {
        TypeFilter::default()
    }

    pub fn only<I, S>(types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut types: Vec<String> = types.into_iter().map(Into::into).collect();
        types.sort();
        types.dedup();
        TypeFilter {
            types,
            projects: None,
        }
    }

    /// The same filter, restricted to the projects of a consumer (`None`: every project).
    pub fn within(mut self, projects: Option<Arc<ProjectFilter>>) -> Self {
        self.projects = projects;
        self
    }

    /// Whether the type is wanted (the project is not looked at).
    pub fn matches(&self, event_type: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == event_type)
    }

    /// Whether the event is wanted: its type, then (only with a project filter) its project,
    /// read from `body()`, the event's JSON.
    pub fn admits<B: AsRef<[u8]>>(&self, event_type: &str, body: impl FnOnce() -> B) -> bool {
        if !self.matches(event_type) {
            return false;
        }
        match &self.projects {
            None => true,
            Some(f) => f.admits(project_of(body().as_ref()).as_deref()),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ProjectField {
    Name(String),
    Object { name: String },
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct Named {
    project: Option<ProjectField>,
}

#[derive(Deserialize)]
struct ProjectHead {
    project: Option<ProjectField>,
    #[serde(rename = "projectName")]
    project_name: Option<String>,
    #[serde(rename = "refUpdate")]
    ref_update: Option<Named>,
    change: Option<Named>,
}

fn name(f: Option<ProjectField>) -> Option<String> {
    match f? {
        ProjectField::Name(n) | ProjectField::Object { name: n } => Some(n),
        ProjectField::Other(_) => None,
    }
}

/// The project an event concerns (see the module docs); `None` when it names none or is not
/// a JSON object.
pub fn project_of(body: &[u8]) -> Option<String> {
    let head: ProjectHead = serde_json::from_slice(body).ok()?;
    name(head.project)
        .or(head.project_name)
        .or_else(|| head.ref_update.and_then(|r| name(r.project)))
        .or_else(|| head.change.and_then(|c| name(c.project)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_filter() {
        assert!(TypeFilter::all().matches("anything"));
        let f = TypeFilter::only(["patchset-created", "ref-updated"]);
        assert!(f.matches("ref-updated") && !f.matches("comment-added"));
    }

    #[test]
    fn projects_of_gerrit_events() {
        let cases: [(&str, Option<&str>); 7] = [
            (
                r#"{"type":"patchset-created","project":"repo1","change":{"project":"x"}}"#,
                Some("repo1"),
            ),
            (
                r#"{"type":"ref-updated","refUpdate":{"refName":"refs/heads/m","project":"tools/a"}}"#,
                Some("tools/a"),
            ),
            (
                r#"{"type":"project-created","projectName":"new/one","headName":"refs/heads/master"}"#,
                Some("new/one"),
            ),
            (
                r#"{"type":"comment-added","project":{"name":"old"}}"#,
                Some("old"),
            ),
            (
                r#"{"type":"change-merged","change":{"project":"via-change"}}"#,
                Some("via-change"),
            ),
            (r#"{"type":"dropped-output"}"#, None),
            ("not json", None),
        ];
        for (body, want) in cases {
            assert_eq!(project_of(body.as_bytes()).as_deref(), want, "{body}");
        }
    }

    #[test]
    fn a_consumer_sees_its_projects_and_events_without_one() {
        let p = ProjectFilter::new(["tools/.*", "plugins/replication"]).unwrap();
        let f = TypeFilter::all().within(Some(Arc::new(p)));
        let ev = |project: &str| format!(r#"{{"type":"ref-updated","project":"{project}"}}"#);
        assert!(f.admits("ref-updated", || ev("tools/gerrit")));
        assert!(f.admits("ref-updated", || ev("plugins/replication")));
        assert!(
            !f.admits("ref-updated", || ev("secret/tools/x")),
            "anchored"
        );
        assert!(
            !f.admits("ref-updated", || ev("plugins/replication-2")),
            "anchored"
        );
        assert!(f.admits("dropped-output", || r#"{"type":"dropped-output"}"#));
        let typed = TypeFilter::only(["comment-added"]).within(f.projects.clone());
        assert!(!typed.admits("ref-updated", || ev("tools/gerrit")));
        assert!(ProjectFilter::new(["("]).unwrap_err().contains("`(`"));
    }
}
