//! `summary()`: the Keras table of layers, output shapes, parameter counts and
//! connections, with the same totals Keras prints.

use super::Model;

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(n: usize) -> String {
    let b = (n * 4) as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.2} MB", b / 1024.0 / 1024.0)
    } else if b >= 1024.0 {
        format!("{:.2} KB", b / 1024.0)
    } else {
        format!("{b:.2} B")
    }
}

impl Model {
    /// The summary table as a string (see [`Model::print_summary`]).
    pub fn summary(&self) -> String {
        let mut rows: Vec<[String; 4]> = vec![];
        for &t in &self.inputs {
            let s = &self.tensors[t];
            rows.push([format!("{} (InputLayer)", s.name), s.spec.keras_shape(), "0".into(), "-".into()]);
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let calls: Vec<_> = self.nodes.iter().filter(|n| n.layer == li).collect();
            let Some(first) = calls.first() else { continue };
            let connected: Vec<String> =
                calls.iter().flat_map(|n| n.inputs.iter().map(|&i| self.tensors[i].name.clone())).collect();
            let params: usize = layer.weights().iter().map(|w| w.value.len()).sum();
            rows.push([
                format!("{} ({})", layer.name(), layer.class_name()),
                self.tensors[first.output].spec.keras_shape(),
                thousands(params),
                connected.join(", "),
            ]);
        }
        let heads = ["Layer (type)", "Output Shape", "Param #", "Connected to"];
        let mut w = heads.map(|h| h.chars().count());
        for r in &rows {
            for (k, c) in r.iter().enumerate() {
                w[k] = w[k].max(c.chars().count());
            }
        }
        let line = |l: &str, m: &str, r: &str, fill: &str| {
            format!("{l}{}{r}\n", w.iter().map(|n| fill.repeat(n + 2)).collect::<Vec<_>>().join(m))
        };
        let row = |cells: &[String; 4]| {
            let mut s = String::from("│");
            for (k, c) in cells.iter().enumerate() {
                let pad = w[k] - c.chars().count();
                if k == 2 {
                    s += &format!(" {}{} │", " ".repeat(pad), c);
                } else {
                    s += &format!(" {}{} │", c, " ".repeat(pad));
                }
            }
            s + "\n"
        };
        let mut out = format!("Model: \"{}\"\n", self.name);
        out += &line("┌", "┬", "┐", "─");
        out += &row(&heads.map(String::from));
        out += &line("├", "┼", "┤", "═");
        for (i, r) in rows.iter().enumerate() {
            out += &row(r);
            if i + 1 < rows.len() {
                out += &line("├", "┼", "┤", "─");
            }
        }
        out += &line("└", "┴", "┘", "─");
        let (total, trainable) = (self.count_params(), self.count_trainable_params());
        out += &format!(" Total params: {} ({})\n", thousands(total), bytes(total));
        out += &format!(" Trainable params: {} ({})\n", thousands(trainable), bytes(trainable));
        out += &format!(" Non-trainable params: {} ({})\n", thousands(total - trainable), bytes(total - trainable));
        out
    }

    /// Prints [`Model::summary`] to stdout.
    pub fn print_summary(&self) {
        print!("{}", self.summary());
    }
}
