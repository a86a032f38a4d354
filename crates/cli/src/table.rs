//! Text tables in patronictl's layout (prettytable style): `|` verticals,
//! `-` horizontals, `+` junctions, one space of padding, a title written over
//! the top rule, rules only at the top, under the header and at the bottom —
//! or between every row when a cell spans several lines.

/// A table to render.
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Columns whose cells are right-aligned (headers stay left-aligned).
    pub right: Vec<usize>,
    /// Written over the top rule after the first `+` (e.g. ` Cluster: demo (7…) `).
    pub title: Option<String>,
}

fn width(text: &str) -> usize {
    text.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

impl Table {
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r.get(c).map_or(0, |cell| width(cell)))
                    .chain(std::iter::once(width(&self.headers[c])))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let rule: String = {
            let mut s = String::from("+");
            for w in &widths {
                s.push_str(&"-".repeat(w + 2));
                s.push('+');
            }
            s
        };
        let mut top = rule.clone();
        if let Some(title) = &self.title {
            let len = top.chars().count();
            let mut chars: Vec<char> = top.chars().collect();
            for (i, ch) in title.chars().enumerate() {
                let at = i + 1;
                if at >= len.saturating_sub(1) {
                    break;
                }
                chars[at] = ch;
            }
            top = chars.into_iter().collect();
        }
        let line = |cells: &[String], header: bool| -> String {
            let height = cells
                .iter()
                .map(|c| c.lines().count().max(1))
                .max()
                .unwrap_or(1);
            let mut out = String::new();
            for k in 0..height {
                out.push('|');
                for (c, w) in widths.iter().enumerate() {
                    let cell = cells.get(c).map_or("", String::as_str);
                    let text = cell.lines().nth(k).unwrap_or("");
                    let pad = w - text.chars().count();
                    if !header && self.right.contains(&c) {
                        out.push_str(&format!(" {}{} |", " ".repeat(pad), text));
                    } else {
                        out.push_str(&format!(" {}{} |", text, " ".repeat(pad)));
                    }
                }
                out.push('\n');
            }
            out
        };
        let multiline = self.rows.iter().flatten().any(|cell| cell.contains('\n'));
        let mut out = String::new();
        out.push_str(&top);
        out.push('\n');
        out.push_str(&line(&self.headers, true));
        out.push_str(&rule);
        out.push('\n');
        for (i, row) in self.rows.iter().enumerate() {
            if multiline && i > 0 {
                out.push_str(&rule);
                out.push('\n');
            }
            out.push_str(&line(row, false));
        }
        out.push_str(&rule);
        out.push('\n');
        out
    }
}

/// Tab-separated values, header row first (patronictl's `-f tsv`).
pub fn tsv(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut out = headers.join("\t");
    out.push('\n');
    for row in rows {
        out.push_str(&row.join("\t"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn renders_like_prettytable_with_a_title_cut_to_the_rule() {
        let table = Table {
            headers: s(&["Member", "TL"]),
            rows: vec![s(&["pg0", "2"]), s(&["pg1", "10"])],
            right: vec![1],
            title: Some(" Cluster: demo ".into()),
        };
        assert_eq!(
            table.render(),
            "+ Cluster: dem+\n| Member | TL |\n+--------+----+\n| pg0    |  2 |\n| pg1    | 10 |\n+--------+----+\n"
        );
    }

    #[test]
    fn multi_line_cells_put_rules_between_rows() {
        let table = Table {
            headers: s(&["Member", "Tags"]),
            rows: vec![s(&["pg0", ""]), s(&["pg1", "a: 1\nb: 2"])],
            right: vec![],
            title: None,
        };
        assert_eq!(
            table.render(),
            "+--------+------+\n| Member | Tags |\n+--------+------+\n| pg0    |      |\n+--------+------+\n| pg1    | a: 1 |\n|        | b: 2 |\n+--------+------+\n"
        );
    }

    #[test]
    fn tsv_has_a_header_row() {
        assert_eq!(tsv(&s(&["a", "b"]), &[s(&["1", "2"])]), "a\tb\n1\t2\n");
    }
}
