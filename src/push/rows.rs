//! Reading a POS export: CSV with a header row of the contract's field names (`barcodes`
//! separated by `|`), or JSON Lines of `ProductUpdate` in the proto JSON mapping. Rows are
//! read one at a time, each with its line number, so files of any size stream.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::pb;

/// One product of the export and the line it came from (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub line: u64,
    pub product: pb::ProductUpdate,
}

/// A row that cannot be read as a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub message: String,
}

pub type Rows = Box<dyn Iterator<Item = Result<Row, RowError>> + Send>;

/// The columns a CSV export may have: the fields of `ProductUpdate`.
const CSV_COLUMNS: [&str; 9] = [
    "external_id",
    "barcodes",
    "in_stock",
    "price",
    "name",
    "unit_size",
    "abv",
    "proof",
    "category",
];

/// Opens an export; JSON Lines when its first non-blank character is `{`, CSV otherwise.
pub fn open(path: &Path) -> io::Result<Rows> {
    let mut reader = BufReader::new(File::open(path)?);
    let json = loop {
        let buffer = reader.fill_buf()?;
        match buffer.iter().position(|byte| !byte.is_ascii_whitespace()) {
            Some(at) => break buffer[at] == b'{',
            None if buffer.is_empty() => break false,
            None => {
                let length = buffer.len();
                reader.consume(length);
            }
        }
    };
    Ok(if json {
        json_lines(reader)
    } else {
        csv_rows(reader)
    })
}

fn json_lines(reader: impl BufRead + Send + 'static) -> Rows {
    Box::new(reader.lines().enumerate().filter_map(|(number, line)| {
        let line_number = number as u64 + 1;
        match line {
            Ok(line) if line.trim().is_empty() => None,
            Ok(line) => Some(json_product(&line).map_err(|message| RowError {
                line: line_number,
                message,
            })),
            Err(error) => Some(Err(RowError {
                line: line_number,
                message: format!("cannot read the line: {error}"),
            })),
        }
        .map(|product| {
            product.map(|product| Row {
                line: line_number,
                product,
            })
        })
    }))
}

/// A `ProductUpdate` in the proto JSON mapping: lowerCamelCase or the proto's own field
/// names, 64-bit integers as numbers or strings, enums by name or number.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonProduct {
    #[serde(alias = "externalId", default)]
    external_id: Option<String>,
    #[serde(default)]
    barcodes: Vec<String>,
    #[serde(alias = "inStock", default)]
    in_stock: Option<Value>,
    #[serde(default)]
    price: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(alias = "unitSize", default)]
    unit_size: Option<String>,
    #[serde(default)]
    abv: Option<f64>,
    #[serde(default)]
    proof: Option<f64>,
    #[serde(default)]
    category: Option<Value>,
}

fn json_product(line: &str) -> Result<pb::ProductUpdate, String> {
    let json: JsonProduct =
        serde_json::from_str(line).map_err(|error| format!("not a ProductUpdate: {error}"))?;
    let in_stock = match json.in_stock {
        None | Some(Value::Null) => None,
        Some(Value::Number(number)) => Some(
            number
                .as_i64()
                .ok_or_else(|| format!("in_stock {number} is not a whole number"))?,
        ),
        Some(Value::String(text)) => Some(integer("in_stock", &text)?),
        Some(other) => return Err(format!("in_stock {other} is not a number")),
    };
    let category = match json.category {
        None | Some(Value::Null) => 0,
        Some(Value::Number(number)) => number
            .as_i64()
            .and_then(|code| i32::try_from(code).ok())
            .ok_or_else(|| format!("category {number} is not a category"))?,
        Some(Value::String(name)) => category(&name)?,
        Some(other) => return Err(format!("category {other} is not a category")),
    };
    Ok(pb::ProductUpdate {
        external_id: json.external_id.unwrap_or_default(),
        barcodes: json.barcodes,
        in_stock,
        price: json.price,
        name: json.name,
        unit_size: json.unit_size,
        abv: json.abv,
        proof: json.proof,
        category,
    })
}

fn csv_rows(reader: impl Read + Send + 'static) -> Rows {
    let mut csv = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(reader);
    let columns = match csv.headers() {
        Ok(headers) => headers
            .iter()
            .map(|name| {
                let name = name.trim();
                CSV_COLUMNS
                    .iter()
                    .position(|column| *column == name)
                    .ok_or_else(|| {
                        format!(
                            "unknown column {name:?}; the columns are {}",
                            CSV_COLUMNS.join(", ")
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>(),
        Err(error) => Err(format!("cannot read the header row: {error}")),
    };
    let columns = match columns {
        Ok(columns) => columns,
        Err(message) => return Box::new(std::iter::once(Err(RowError { line: 1, message }))),
    };
    Box::new(csv.into_records().map(move |record| {
        let record = record.map_err(|error| RowError {
            line: error.position().map_or(0, |position| position.line()),
            message: format!("cannot read the row: {error}"),
        })?;
        let line = record.position().map_or(0, |position| position.line());
        csv_product(&columns, &record)
            .map(|product| Row { line, product })
            .map_err(|message| RowError { line, message })
    }))
}

fn csv_product(columns: &[usize], record: &csv::StringRecord) -> Result<pb::ProductUpdate, String> {
    let mut product = pb::ProductUpdate::default();
    for (&column, cell) in columns.iter().zip(record.iter()) {
        let cell = cell.trim();
        if cell.is_empty() {
            continue;
        }
        let text = || Some(cell.to_owned());
        match CSV_COLUMNS[column] {
            "external_id" => product.external_id = cell.to_owned(),
            "barcodes" => {
                product.barcodes = cell
                    .split('|')
                    .map(str::trim)
                    .filter(|barcode| !barcode.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "in_stock" => product.in_stock = Some(integer("in_stock", cell)?),
            "price" => product.price = text(),
            "name" => product.name = text(),
            "unit_size" => product.unit_size = text(),
            "abv" => product.abv = Some(decimal("abv", cell)?),
            "proof" => product.proof = Some(decimal("proof", cell)?),
            "category" => product.category = category(cell)?,
            other => unreachable!("column {other} is not in CSV_COLUMNS"),
        }
    }
    Ok(product)
}

fn integer(field: &str, text: &str) -> Result<i64, String> {
    text.parse()
        .map_err(|_| format!("{field} {text:?} is not a whole number"))
}

fn decimal(field: &str, text: &str) -> Result<f64, String> {
    text.parse()
        .map_err(|_| format!("{field} {text:?} is not a number"))
}

/// A category by its proto name (`CATEGORY_WINE`), its short name (`wine`) or number.
fn category(text: &str) -> Result<i32, String> {
    let upper = text.trim().to_ascii_uppercase();
    let name = upper.strip_prefix("CATEGORY_").unwrap_or(&upper);
    match name {
        "UNSPECIFIED" | "0" => Ok(pb::Category::Unspecified as i32),
        "WINE" | "1" => Ok(pb::Category::Wine as i32),
        "DRINK" | "2" => Ok(pb::Category::Drink as i32),
        _ => Err(format!(
            "category {text:?} is unknown; use WINE or DRINK (or CATEGORY_WINE, CATEGORY_DRINK)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn read(text: &str) -> Vec<Result<Row, RowError>> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        open(file.path()).unwrap().collect()
    }

    #[test]
    fn csv_rows_carry_their_fields_and_line_numbers() {
        let rows = read(
            "external_id,barcodes,in_stock,price,name,category\n\
             sku-1,111|222,5,12.99,\"Merlot, red\",wine\n\
             sku-2,,,,,\n",
        );
        let first = rows[0].as_ref().unwrap();
        assert_eq!(first.line, 2);
        assert_eq!(first.product.barcodes, ["111", "222"]);
        assert_eq!(first.product.in_stock, Some(5));
        assert_eq!(first.product.name.as_deref(), Some("Merlot, red"));
        assert_eq!(first.product.category, pb::Category::Wine as i32);
        let second = rows[1].as_ref().unwrap();
        assert_eq!((second.line, second.product.in_stock), (3, None));
        assert_eq!(second.product.price, None);
    }

    #[test]
    fn bad_csv_cells_and_columns_name_the_line() {
        let rows = read("external_id,in_stock\nsku-1,5\nsku-2,many\n");
        assert!(rows[0].is_ok());
        let error = rows[1].as_ref().unwrap_err();
        assert_eq!(error.line, 3);
        assert!(
            error.message.contains("in_stock \"many\""),
            "{}",
            error.message
        );

        let rows = read("external_id,colour\nsku-1,red\n");
        assert_eq!(rows.len(), 1);
        assert!(rows[0].as_ref().unwrap_err().message.contains("\"colour\""));
    }

    #[test]
    fn json_lines_follow_the_proto_json_mapping() {
        let rows = read(
            "{\"externalId\": \"a\", \"inStock\": \"7\", \"category\": \"CATEGORY_DRINK\"}\n\
             \n\
             {\"external_id\": \"b\", \"in_stock\": 3, \"unit_size\": \"1L\", \"abv\": 40}\n\
             {\"external_id\": \"c\", \"colour\": \"red\"}\n",
        );
        let a = rows[0].as_ref().unwrap();
        assert_eq!((a.line, a.product.in_stock), (1, Some(7)));
        assert_eq!(a.product.category, pb::Category::Drink as i32);
        let b = rows[1].as_ref().unwrap();
        assert_eq!((b.line, b.product.abv), (3, Some(40.0)));
        let error = rows[2].as_ref().unwrap_err();
        assert_eq!(error.line, 4);
        assert!(error.message.contains("colour"), "{}", error.message);
    }
}
