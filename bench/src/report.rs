//! The figures of one run and how they are written.

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Default)]
pub struct Report {
    pub figures: BTreeMap<String, f64>,
    /// (figure, limit figure, what the limit is) rows of the Markdown table.
    pub rows: Vec<(String, Option<String>, String)>,
}

impl Report {
    pub fn set(&mut self, name: &str, value: f64) {
        eprintln!("  {name} = {value:.3}");
        self.figures.insert(name.to_owned(), value);
    }

    pub fn row(&mut self, figure: &str, limit: Option<&str>, note: &str) {
        self.rows
            .push((figure.to_owned(), limit.map(str::to_owned), note.to_owned()));
    }

    pub fn write(&self, dir: &Path, quick: bool) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("latest.json"),
            serde_json::to_string_pretty(&self.figures)? + "\n",
        )?;
        let mut md = String::from("# ha-sidecar benchmark\n\n");
        md.push_str(if quick {
            "Quick run (`make bench-quick`): short phases.\n\n"
        } else {
            "Full run (`make bench`).\n\n"
        });
        md.push_str("Every figure was measured in this run on this machine; ratios compare figures of the same run.\n\n");
        md.push_str(
            "| figure | ours | limit (same run) | ratio | what |\n|---|---:|---:|---:|---|\n",
        );
        for (fig, limit, note) in &self.rows {
            let ours = self.figures.get(fig).copied();
            let lim = limit.as_ref().and_then(|l| self.figures.get(l).copied());
            let ratio = match (ours, lim) {
                (Some(o), Some(l)) if l > 0.0 => format!("{:.2}", o / l),
                _ => "–".into(),
            };
            md.push_str(&format!(
                "| `{fig}` | {} | {} | {ratio} | {note} |\n",
                ours.map(fmt).unwrap_or_else(|| "–".into()),
                match (limit, lim) {
                    (Some(l), Some(v)) => format!("{} (`{l}`)", fmt(v)),
                    _ => "–".into(),
                },
            ));
        }
        std::fs::write(dir.join("latest.md"), md)?;
        eprintln!("wrote {}/latest.json and latest.md", dir.display());
        Ok(())
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{:.0}", v)
    } else {
        format!("{:.2}", v)
    }
}
