//! A writer for the Prometheus text exposition format (0.0.4), shared by the metrics provider and the
//! coordinator's `/metrics`.

use std::fmt::Write;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// Builds an exposition family by family: every sample of a family follows its `# HELP` and
/// `# TYPE` lines, as the format requires.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts family `name`; the samples written next belong to it.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    pub fn sample(&mut self, name: &str, labels: Labels<'_>, value: f64) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        self.text.push(' ');
        write_value(&mut self.text, value);
        self.text.push('\n');
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// Appends text that is already in the exposition format (another source's families).
    pub fn append(&mut self, text: &str) {
        self.text.push_str(text);
        if !text.is_empty() && !text.ends_with('\n') {
            self.text.push('\n');
        }
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_escapes_and_special_values() {
        let mut e = Exposition::new();
        e.family("x_total", Kind::Counter, "Things\nseen")
            .sample("x_total", &[("a", "q\"uo\\te"), ("b", "line\nbreak")], 3.0)
            .sample("x_total", &[], 0.5);
        e.single("y", Kind::Gauge, "Why", f64::INFINITY);
        e.append("z 1");
        assert_eq!(
            e.finish(),
            "# HELP x_total Things\\nseen\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"uo\\\\te\",b=\"line\\nbreak\"} 3\nx_total 0.5\n\
             # HELP y Why\n# TYPE y gauge\ny +Inf\nz 1\n"
        );
    }
}
