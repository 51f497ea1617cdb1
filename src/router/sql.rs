//! Shard-key extraction from SQL text (sqlparser, PostgreSQL dialect).
//!
//! A statement's *shape* — its command, the sharded table it touches and
//! where the key comes from — is worked out once per normalised text (see
//! `lexer`) and cached; a later statement of the same shape only re-reads
//! its literals. Statements the parser cannot read are still classified
//! (by their first keyword) and routed conservatively: if they name a
//! sharded table they are treated as touching every shard.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use smallvec::SmallVec;

use sqlparser::ast::{
    self, AssignmentTarget, BinaryOperator, Expr, FromTable, InTarget, ObjectName, ObjectNamePart,
    Query, SetExpr, Statement, TableFactor, TableObject, TableWithJoins, UnaryOperator, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::cache::ShapeCache;
use super::keys::key_from_text;
use super::lexer::{
    literal_value, normalize, normalize_into, placeholder_text, Normalized, PLACEHOLDER_BASE,
};
use crate::config::{KeyType, TableConfig};

pub use super::keys::{hash_key, key_from_param};

/// What a statement does, as far as routing and transactions care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Begin,
    Commit,
    Rollback,
    /// SAVEPOINT, RELEASE, ROLLBACK TO: stay on the transaction's node.
    Savepoint,
    Set,
    Reset,
    Show,
    Select,
    Insert,
    Update,
    Delete,
    Copy,
    /// DDL and everything else.
    Other,
}

impl Command {
    /// Session and transaction control: never touches a table.
    pub fn needs_no_table(self) -> bool {
        matches!(
            self,
            Command::Begin
                | Command::Commit
                | Command::Rollback
                | Command::Savepoint
                | Command::Set
                | Command::Reset
                | Command::Show
        )
    }

    pub fn is_write(self) -> bool {
        matches!(
            self,
            Command::Insert | Command::Update | Command::Delete | Command::Copy
        )
    }
}

/// A shard-key value, already in the type of its table's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyValue {
    Int(i64),
    Text(String),
    Uuid([u8; 16]),
    Null,
}

/// Where a key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    Value(KeyValue),
    /// The 1-based `$n` parameter of the extended protocol.
    Param(usize),
    /// A literal of the statement text: `Analysis::values[i]`.
    Literal(usize),
}

/// One statement text's analysis: the cached shapes (shared by every text
/// of the same shape) plus this text's literal key values, so the hot path
/// allocates nothing for a statement it has seen before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub shapes: Arc<[Shape]>,
    pub values: SmallVec<[KeyValue; 2]>,
}

impl Analysis {
    /// The shapes with literal keys filled in (allocates; for tests and
    /// diagnostics).
    pub fn resolved(&self) -> Arc<[Shape]> {
        if self.values.is_empty() {
            return self.shapes.clone();
        }
        let mut shapes = self.shapes.to_vec();
        for s in &mut shapes {
            if let Target::Keys { keys, .. } = &mut s.target {
                for k in keys {
                    if let KeyRef::Literal(i) = *k {
                        *k = KeyRef::Value(self.values[i].clone());
                    }
                }
            }
        }
        shapes.into()
    }
}

/// Where a statement must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// No table at all (`SELECT 1`, `SET`, `BEGIN`, `SHOW`).
    NoTable,
    /// Only unsharded tables: the default node.
    Unsharded,
    /// One sharded table, with the key of every row it touches (an `IN` list
    /// or a multi-row `INSERT` gives several).
    Keys {
        table: Arc<str>,
        key_type: KeyType,
        keys: Vec<KeyRef>,
    },
    /// A sharded table with no usable key: reads fan out, writes are refused.
    AllShards {
        table: Arc<str>,
        key_column: Arc<str>,
    },
}

/// The routing-relevant shape of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub command: Command,
    pub target: Target,
}

impl RouteError {
    /// The SQLSTATE a client gets for this refusal.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            RouteError::BadKey(_) => crate::protocol::sqlstate::INVALID_TEXT_REPRESENTATION,
            RouteError::KeyUpdate { .. } => crate::protocol::sqlstate::FEATURE_NOT_SUPPORTED,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("{0}")]
    BadKey(String),
    #[error("UPDATE of \"{table}\" changes its shard key \"{key}\"; delete the row and insert it again instead")]
    KeyUpdate { table: String, key: String },
}

/// A sharded table as the router sees it.
#[derive(Debug, Clone)]
struct Sharded {
    name: Arc<str>,
    key: Arc<str>,
    key_type: KeyType,
    /// 0-based position of the key among the table's columns, for an
    /// INSERT without a column list (learned from the catalog).
    key_position: Option<usize>,
}

/// How to read the value of `KeyRef::Literal(i)` (the template's i-th
/// patch) from a statement text: its literal number `literal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Patch {
    pub literal: usize,
    pub negate: bool,
    pub key_type: KeyType,
}

/// A cached analysis: shapes with placeholders where literals go.
#[derive(Debug, Clone)]
pub(super) struct Template {
    pub shapes: Arc<[Shape]>,
    pub patches: Vec<Patch>,
    /// A refusal is cached like a shape.
    pub error: Option<RouteError>,
}

/// Analyses statements against the sharded tables; shared by all connections.
pub struct Analyzer {
    tables: HashMap<String, Sharded>,
    cache: ShapeCache,
}

impl Analyzer {
    pub fn new(tables: &[TableConfig]) -> Self {
        let tables = tables
            .iter()
            .map(|t| {
                let name = t.name.to_ascii_lowercase();
                (
                    name.clone(),
                    Sharded {
                        name: name.into(),
                        key: t.shard_key.to_ascii_lowercase().into(),
                        key_type: t.key_type,
                        key_position: None,
                    },
                )
            })
            .collect();
        Self {
            tables,
            cache: ShapeCache::new(16_384),
        }
    }

    /// Tells the router where a table's key sits among its columns, so that
    /// `INSERT INTO t VALUES (...)` without a column list can be routed.
    pub fn set_key_position(&mut self, table: &str, position: usize) {
        if let Some(t) = self.tables.get_mut(&table.to_ascii_lowercase()) {
            t.key_position = Some(position);
        }
    }

    /// A sharded table's key column, key type and (if known) the key's
    /// position among the table's columns.
    pub fn sharded_table(&self, table: &str) -> Option<(&str, KeyType, Option<usize>)> {
        self.tables
            .get(&table.to_ascii_lowercase())
            .map(|t| (&*t.key, t.key_type, t.key_position))
    }

    /// The shape of every statement in `sql` (a simple query may hold
    /// several), with literal keys filled in.
    pub fn analyze(&self, sql: &str) -> Result<Arc<[Shape]>, RouteError> {
        self.analysis(sql).map(|a| a.resolved())
    }

    /// The hot-path form of `analyze`: cached shapes plus literal values.
    pub fn analysis(&self, sql: &str) -> Result<Analysis, RouteError> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Normalized> = std::cell::RefCell::new(Normalized::default());
        }
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut norm) => {
                normalize_into(sql, &mut norm);
                self.analyze_normalized(sql, &norm)
            }
            Err(_) => self.analyze_normalized(sql, &normalize(sql)),
        })
    }

    fn analyze_normalized(&self, sql: &str, norm: &Normalized) -> Result<Analysis, RouteError> {
        let template = match self.cache.get(&norm.key) {
            Some(t) => t,
            None => {
                let t = Arc::new(self.analyze_uncached(sql, norm));
                self.cache.insert(norm.key.clone(), t.clone());
                t
            }
        };
        instantiate(&template, sql, norm)
    }

    fn analyze_uncached(&self, sql: &str, norm: &Normalized) -> Template {
        // Parse with literals turned into numbered placeholders: the shape
        // then says which literal is the key, whatever its value.
        let text = placeholder_text(sql, &norm.lits);
        let parsed = Parser::parse_sql(&PostgreSqlDialect {}, &text);
        match parsed {
            Ok(stmts) if !stmts.is_empty() => {
                let mut shapes = Vec::with_capacity(stmts.len());
                let mut a = StatementAnalysis {
                    analyzer: self,
                    patches: Vec::new(),
                };
                for s in &stmts {
                    match a.statement(s) {
                        Ok(shape) => shapes.push(shape),
                        Err(e) => {
                            return Template {
                                shapes: Arc::new([]),
                                patches: Vec::new(),
                                error: Some(e),
                            }
                        }
                    }
                }
                Template {
                    shapes: shapes.into(),
                    patches: a.patches,
                    error: None,
                }
            }
            _ => Template {
                shapes: vec![self.fallback(norm)].into(),
                patches: Vec::new(),
                error: None,
            },
        }
    }

    /// A statement the parser cannot read: classify it by its first
    /// keyword; if it names a sharded table, it touches every shard.
    fn fallback(&self, norm: &Normalized) -> Shape {
        let mut words = norm.words();
        let first = words.next().unwrap_or("");
        let second = words.next().unwrap_or("");
        let command = match (first, second) {
            ("begin", _) | ("start", "transaction") => Command::Begin,
            ("commit", _) | ("end", _) => Command::Commit,
            ("rollback", "to") | ("savepoint", _) | ("release", _) => Command::Savepoint,
            ("rollback", _) | ("abort", _) => Command::Rollback,
            ("set", _) => Command::Set,
            ("reset", _) => Command::Reset,
            ("show", _) => Command::Show,
            ("select", _) | ("with", _) | ("values", _) | ("table", _) => Command::Select,
            ("insert", _) => Command::Insert,
            ("update", _) => Command::Update,
            ("delete", _) => Command::Delete,
            ("copy", _) => Command::Copy,
            _ => Command::Other,
        };
        if command.needs_no_table() {
            return Shape {
                command,
                target: Target::NoTable,
            };
        }
        let sharded = norm.words().find_map(|w| self.tables.get(w));
        let target = match sharded {
            Some(t) => Target::AllShards {
                table: t.name.clone(),
                key_column: t.key.clone(),
            },
            None => Target::Unsharded,
        };
        Shape { command, target }
    }
}

/// Reads the values of a template's literal keys from this statement's text.
fn instantiate(t: &Template, sql: &str, norm: &Normalized) -> Result<Analysis, RouteError> {
    if let Some(e) = &t.error {
        return Err(e.clone());
    }
    let mut values = SmallVec::new();
    for p in &t.patches {
        let lit = norm
            .lits
            .get(p.literal)
            .ok_or_else(|| RouteError::BadKey("literal missing".into()))?;
        let Some(text) = literal_value(sql, lit) else {
            return Err(RouteError::BadKey(format!(
                "shard key literal {} is not a value",
                &sql[lit.start..lit.end]
            )));
        };
        let key = if p.negate {
            key_from_text(&format!("-{text}"), p.key_type)?
        } else {
            key_from_text(&text, p.key_type)?
        };
        values.push(key);
    }
    Ok(Analysis {
        shapes: t.shapes.clone(),
        values,
    })
}

/// Relation names a statement mentions (FROM, JOIN, subqueries, CTEs, DML targets).
fn relations(s: &Statement) -> Vec<ObjectName> {
    let mut out = Vec::new();
    // COPY's table is not visited as a relation by sqlparser.
    if let Statement::Copy {
        source: ast::CopySource::Table { table_name, .. },
        ..
    } = s
    {
        out.push(table_name.clone());
    }
    let _ = ast::visit_relations(s, |r| {
        out.push(r.clone());
        ControlFlow::<()>::Continue(())
    });
    out
}

/// The unqualified name of a relation, folded as PostgreSQL folds it.
pub fn last_part(name: &ObjectName) -> Option<String> {
    match name.0.last()? {
        ObjectNamePart::Identifier(id) => Some(if id.quote_style.is_some() {
            id.value.clone()
        } else {
            id.value.to_ascii_lowercase()
        }),
        _ => None,
    }
}

/// The analysis of one parsed statement.
struct StatementAnalysis<'a> {
    analyzer: &'a Analyzer,
    /// Literal keys of all statements so far (`KeyRef::Literal` indexes it).
    patches: Vec<Patch>,
}

/// A key expression found in a WHERE or VALUES.
enum Found {
    Known(KeyRef),
    Literal { index: usize, negate: bool },
}

impl StatementAnalysis<'_> {
    fn statement(&mut self, s: &Statement) -> Result<Shape, RouteError> {
        let command = classify(s);
        if command.needs_no_table() {
            return Ok(Shape {
                command,
                target: Target::NoTable,
            });
        }
        let rels = relations(s);
        if rels.is_empty() {
            return Ok(Shape {
                command,
                target: Target::NoTable,
            });
        }
        let sharded: Vec<&Sharded> = rels
            .iter()
            .filter_map(|r| last_part(r).and_then(|n| self.analyzer.tables.get(&n)))
            .collect();
        let Some(table) = sharded.first().copied() else {
            return Ok(Shape {
                command,
                target: Target::Unsharded,
            });
        };
        let all_shards = Shape {
            command,
            target: Target::AllShards {
                table: table.name.clone(),
                key_column: table.key.clone(),
            },
        };
        // One occurrence of one sharded table is what we route by key; joins
        // of sharded tables (or self-joins) go to every shard.
        if sharded.len() > 1 {
            return Ok(all_shards);
        }
        let found = match s {
            Statement::Query(q) => self.query_keys(q, table),
            Statement::Insert(ins) => self.insert_keys(ins, table),
            Statement::Update(u) => {
                for a in &u.assignments {
                    let cols: Vec<&ObjectName> = match &a.target {
                        AssignmentTarget::ColumnName(c) => vec![c],
                        AssignmentTarget::Tuple(cs) => cs.iter().collect(),
                    };
                    if cols
                        .iter()
                        .any(|c| last_part(c).as_deref() == Some(&*table.key))
                    {
                        return Err(RouteError::KeyUpdate {
                            table: table.name.to_string(),
                            key: table.key.to_string(),
                        });
                    }
                }
                if u.from.is_some() {
                    None
                } else {
                    self.where_keys(u.selection.as_ref(), std::slice::from_ref(&u.table), table)
                }
            }
            Statement::Delete(d) => {
                let from = match &d.from {
                    FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
                };
                if d.using.is_some() {
                    None
                } else {
                    self.where_keys(d.selection.as_ref(), from, table)
                }
            }
            _ => None,
        };
        match found {
            Some(keys) if !keys.is_empty() => {
                let mut refs = Vec::with_capacity(keys.len());
                for f in keys {
                    refs.push(match f {
                        Found::Known(r) => r,
                        Found::Literal { index, negate } => {
                            self.patches.push(Patch {
                                literal: index,
                                negate,
                                key_type: table.key_type,
                            });
                            KeyRef::Literal(self.patches.len() - 1)
                        }
                    });
                }
                Ok(Shape {
                    command,
                    target: Target::Keys {
                        table: table.name.clone(),
                        key_type: table.key_type,
                        keys: refs,
                    },
                })
            }
            _ => Ok(all_shards),
        }
    }

    fn query_keys(&self, q: &Query, table: &Sharded) -> Option<Vec<Found>> {
        match q.body.as_ref() {
            SetExpr::Select(sel) => self.where_keys(sel.selection.as_ref(), &sel.from, table),
            SetExpr::Query(inner) => self.query_keys(inner, table),
            _ => None,
        }
    }

    fn insert_keys(&self, ins: &ast::Insert, table: &Sharded) -> Option<Vec<Found>> {
        match &ins.table {
            TableObject::TableName(_) => {}
            _ => return None,
        }
        let pos = if ins.columns.is_empty() {
            table.key_position?
        } else {
            ins.columns
                .iter()
                .position(|c| last_part(c).as_deref() == Some(&*table.key))?
        };
        let src = ins.source.as_ref()?;
        let SetExpr::Values(values) = src.body.as_ref() else {
            return None;
        };
        let mut out = Vec::with_capacity(values.rows.len());
        for row in &values.rows {
            out.push(value_of(row.content.get(pos)?)?);
        }
        Some(out)
    }

    /// Keys pinned by `key = value` / `key IN (values)` terms of the top-level
    /// AND-conjunction of a WHERE clause.
    fn where_keys(
        &self,
        selection: Option<&Expr>,
        from: &[TableWithJoins],
        table: &Sharded,
    ) -> Option<Vec<Found>> {
        let mut names: Vec<String> = vec![table.name.to_string()];
        for twj in from {
            for f in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
                if let TableFactor::Table {
                    name,
                    alias: Some(a),
                    ..
                } = f
                {
                    if last_part(name).as_deref() == Some(&*table.name) {
                        names.push(a.name.value.to_ascii_lowercase());
                    }
                }
            }
        }
        // Unqualified columns are the sharded table's only when it is alone.
        let alone = from.len() == 1 && from[0].joins.is_empty();
        fn is_key(e: &Expr, alone: bool, names: &[String], key: &str) -> bool {
            match e {
                Expr::Identifier(id) => alone && id.value.eq_ignore_ascii_case(key),
                Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                    let col = &parts[parts.len() - 1];
                    let qual = parts[parts.len() - 2].value.to_ascii_lowercase();
                    col.value.eq_ignore_ascii_case(key) && names.contains(&qual)
                }
                Expr::Nested(inner) => is_key(inner, alone, names, key),
                _ => false,
            }
        }
        let is_key = |e: &Expr| is_key(e, alone, &names, &table.key);
        let mut terms = Vec::new();
        conjuncts(selection?, &mut terms);
        for t in terms {
            match t {
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Eq,
                    right,
                } => {
                    if is_key(left) {
                        if let Some(v) = value_of(right) {
                            return Some(vec![v]);
                        }
                    }
                    if is_key(right) {
                        if let Some(v) = value_of(left) {
                            return Some(vec![v]);
                        }
                    }
                }
                Expr::In {
                    expr,
                    target: InTarget::List(list),
                    negated: false,
                    ..
                } if is_key(expr) => {
                    let vals: Option<Vec<Found>> = list.iter().map(value_of).collect();
                    if let Some(v) = vals {
                        if !v.is_empty() {
                            return Some(v);
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// Splits an expression on top-level ANDs (through parentheses).
fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Nested(inner) => conjuncts(inner, out),
        other => out.push(other),
    }
}

/// A value expression: a literal placeholder, a `$n` parameter, NULL, or
/// one of those under casts, parentheses and a unary minus.
fn value_of(e: &Expr) -> Option<Found> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => {
                let n: usize = p.strip_prefix('$')?.parse().ok()?;
                Some(if n >= PLACEHOLDER_BASE {
                    Found::Literal {
                        index: n - PLACEHOLDER_BASE,
                        negate: false,
                    }
                } else {
                    Found::Known(KeyRef::Param(n))
                })
            }
            Value::Null => Some(Found::Known(KeyRef::Value(KeyValue::Null))),
            _ => None,
        },
        Expr::Cast { expr, .. } | Expr::Nested(expr) => value_of(expr),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match value_of(expr)? {
            Found::Literal { index, negate } => Some(Found::Literal {
                index,
                negate: !negate,
            }),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => value_of(expr),
        _ => None,
    }
}

fn classify(s: &Statement) -> Command {
    match s {
        Statement::StartTransaction { .. } => Command::Begin,
        Statement::Commit { .. } => Command::Commit,
        Statement::Rollback {
            savepoint: Some(_), ..
        } => Command::Savepoint,
        Statement::Rollback { .. } => Command::Rollback,
        Statement::Savepoint { .. } | Statement::ReleaseSavepoint { .. } => Command::Savepoint,
        Statement::Set(ast::Set::SetTransaction { .. }) => Command::Set,
        Statement::Set(_) => Command::Set,
        Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => Command::Show,
        Statement::Query(_) => Command::Select,
        Statement::Insert(_) => Command::Insert,
        Statement::Update(_) => Command::Update,
        Statement::Delete(_) => Command::Delete,
        Statement::Copy { .. } => Command::Copy,
        _ => Command::Other,
    }
}
