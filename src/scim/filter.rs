//! The SCIM filter language (RFC 7644 §3.4.2.2) and PATCH paths (§3.5.2): a lexer, a
//! recursive-descent parser with bounds on length and depth, and resolution of every
//! attribute name against the schemas, so later stages see only known attributes.

use serde_json::Number;

use super::error::{Result, ScimError};
use super::schema::{self, AttrDef, AttrRef, AttrType, SchemaDef};

/// Longest filter accepted, in bytes.
pub const MAX_FILTER_LEN: usize = 4096;
/// Deepest nesting of parentheses, `not` and value paths accepted.
pub const MAX_DEPTH: usize = 24;
/// Most comparisons in one filter.
pub const MAX_TERMS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    fn parse(word: &str) -> Option<Self> {
        Some(match word.to_ascii_lowercase().as_str() {
            "eq" => CompareOp::Eq,
            "ne" => CompareOp::Ne,
            "co" => CompareOp::Co,
            "sw" => CompareOp::Sw,
            "ew" => CompareOp::Ew,
            "gt" => CompareOp::Gt,
            "ge" => CompareOp::Ge,
            "lt" => CompareOp::Lt,
            "le" => CompareOp::Le,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }
    fn is_substring(self) -> bool {
        matches!(self, CompareOp::Co | CompareOp::Sw | CompareOp::Ew)
    }
    fn is_ordering(self) -> bool {
        matches!(
            self,
            CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le
        )
    }
}

/// A literal on the right of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum CompValue {
    Str(String),
    Num(Number),
    Bool(bool),
    Null,
}

/// A resolved attribute reference: a top-level attribute and maybe one sub-attribute.
/// Inside a value path, `attr` is the multi-valued parent and `sub` the element's attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrPath {
    pub attr: AttrRef,
    pub sub: Option<&'static AttrDef>,
}

impl AttrPath {
    /// The definition the comparison applies to: the sub-attribute if any.
    pub fn leaf(&self) -> &'static AttrDef {
        self.sub.unwrap_or(self.attr.attr)
    }
    pub fn display(&self) -> String {
        match self.sub {
            Some(s) => format!("{}.{}", self.attr.qualified(), s.name),
            None => self.attr.qualified(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Present(AttrPath),
    Compare(AttrPath, CompareOp, CompValue),
    /// Some element of a multi-valued complex attribute satisfies the inner filter, whose
    /// paths all name that attribute with a sub-attribute.
    ValuePath(AttrRef, Box<Filter>),
}

/// How attribute names are resolved: against the User schema or the Group schema.
pub type Resolver = fn(&str) -> Option<(AttrRef, Option<&'static AttrDef>)>;

/// Parse and resolve a filter over Users.
pub fn parse(input: &str) -> Result<Filter> {
    parse_with(input, schema::resolve)
}

/// Parse and resolve a filter over Groups.
pub fn parse_group(input: &str) -> Result<Filter> {
    parse_with(input, schema::resolve_group)
}

fn parse_with(input: &str, resolve: Resolver) -> Result<Filter> {
    if input.len() > MAX_FILTER_LEN {
        return Err(ScimError::invalid_filter(format!(
            "filter is longer than {MAX_FILTER_LEN} bytes"
        )));
    }
    let mut p = Parser::new(lex(input).map_err(ScimError::invalid_filter)?, resolve);
    let f = p.filter(None).map_err(ScimError::invalid_filter)?;
    if let Some(t) = p.peek() {
        return Err(ScimError::invalid_filter(format!(
            "unexpected {} after the end of the filter",
            t.describe()
        )));
    }
    Ok(f)
}

/// What a PATCH `path` designates.
#[derive(Debug, Clone, PartialEq)]
pub enum PatchPath {
    /// A whole extension object, e.g. `urn:...:enterprise:2.0:User`.
    Extension(&'static SchemaDef),
    /// An attribute, optionally narrowed to the elements matching `filter` and/or to a
    /// sub-attribute (`name.givenName`, `emails[type eq "work"].value`).
    Attr {
        attr: AttrRef,
        filter: Option<Filter>,
        sub: Option<&'static AttrDef>,
    },
}

/// Parse a PATCH path of a User (RFC 7644 §3.5.2: `attrPath / valuePath [subAttr]`).
pub fn parse_patch_path(input: &str) -> Result<PatchPath> {
    parse_patch_path_with(input, schema::resolve, true)
}

/// Parse a PATCH path of a Group (`members`, `members[value eq "..."]`, `displayName`).
pub fn parse_group_patch_path(input: &str) -> Result<PatchPath> {
    parse_patch_path_with(input, schema::resolve_group, false)
}

fn parse_patch_path_with(input: &str, resolve: Resolver, extensions: bool) -> Result<PatchPath> {
    let input = input.trim();
    if input.is_empty() {
        return Err(ScimError::invalid_path("path is empty"));
    }
    if input.len() > MAX_FILTER_LEN {
        return Err(ScimError::invalid_path(format!(
            "path is longer than {MAX_FILTER_LEN} bytes"
        )));
    }
    if extensions && let Some(ext) = schema::extension(input) {
        return Ok(PatchPath::Extension(ext));
    }
    let mut p = Parser::new(lex(input).map_err(ScimError::invalid_path)?, resolve);
    let path = p.patch_path().map_err(ScimError::invalid_path)?;
    if let Some(t) = p.peek() {
        return Err(ScimError::invalid_path(format!(
            "unexpected {} in path",
            t.describe()
        )));
    }
    Ok(path)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Str(String),
    Num(Number),
    /// An attribute path, operator or keyword: told apart by position.
    Word(String),
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::LParen => "'('".into(),
            Token::RParen => "')'".into(),
            Token::LBracket => "'['".into(),
            Token::RBracket => "']'".into(),
            Token::Str(_) => "a string".into(),
            Token::Num(n) => format!("number {n}"),
            Token::Word(w) => format!("'{}'", w.chars().take(64).collect::<String>()),
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$' | ':' | '.')
}

fn lex(input: &str) -> std::result::Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                tokens.push(Token::LParen);
                i += 1
            }
            ')' => {
                tokens.push(Token::RParen);
                i += 1
            }
            '[' => {
                tokens.push(Token::LBracket);
                i += 1
            }
            ']' => {
                tokens.push(Token::RBracket);
                i += 1
            }
            '"' => {
                let start = i;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err("unterminated string".into()),
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                let s: String = serde_json::from_str(&input[start..i])
                    .map_err(|_| "invalid escape in string".to_string())?;
                tokens.push(Token::Str(s));
            }
            '-' | '0'..='9' => {
                // Attribute names start with a letter, so this is a number literal.
                let start = i;
                i += 1;
                while i < bytes.len()
                    && matches!(bytes[i] as char, '0'..='9' | '.' | 'e' | 'E' | '+' | '-')
                {
                    i += 1;
                }
                let n: Number = input[start..i]
                    .parse()
                    .map_err(|_| format!("invalid number '{}'", &input[start..i]))?;
                tokens.push(Token::Num(n));
            }
            c if is_word_char(c) => {
                let start = i;
                while i < bytes.len() && is_word_char(bytes[i] as char) {
                    i += 1;
                }
                tokens.push(Token::Word(input[start..i].to_string()));
            }
            _ => {
                let ch = input[i..].chars().next().unwrap_or('?');
                return Err(format!("unexpected character '{ch}'"));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    resolve: Resolver,
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
    terms: usize,
}

type PResult<T> = std::result::Result<T, String>;

impl Parser {
    fn new(tokens: Vec<Token>, resolve: Resolver) -> Self {
        Self {
            resolve,
            tokens,
            pos: 0,
            depth: 0,
            terms: 0,
        }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }
    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn peek_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
    }
    fn expect(&mut self, want: Token, what: &str) -> PResult<()> {
        match self.next() {
            Some(t) if t == want => Ok(()),
            Some(t) => Err(format!("expected {what}, found {}", t.describe())),
            None => Err(format!("expected {what}, found the end of the filter")),
        }
    }
    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("filter is nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    /// `parent` is set inside a value path: names resolve to its sub-attributes.
    fn filter(&mut self, parent: Option<AttrRef>) -> PResult<Filter> {
        let mut left = self.and_expr(parent)?;
        while self.peek_keyword("or") {
            self.pos += 1;
            let right = self.and_expr(parent)?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self, parent: Option<AttrRef>) -> PResult<Filter> {
        let mut left = self.unary(parent)?;
        while self.peek_keyword("and") {
            self.pos += 1;
            let right = self.unary(parent)?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, parent: Option<AttrRef>) -> PResult<Filter> {
        if self.peek_keyword("not") && matches!(self.tokens.get(self.pos + 1), Some(Token::LParen))
        {
            self.pos += 1;
            self.enter()?;
            let inner = self.group(parent)?;
            self.depth -= 1;
            return Ok(Filter::Not(Box::new(inner)));
        }
        if matches!(self.peek(), Some(Token::LParen)) {
            self.enter()?;
            let inner = self.group(parent)?;
            self.depth -= 1;
            return Ok(inner);
        }
        self.attr_expr(parent)
    }

    fn group(&mut self, parent: Option<AttrRef>) -> PResult<Filter> {
        self.expect(Token::LParen, "'('")?;
        let inner = self.filter(parent)?;
        self.expect(Token::RParen, "')'")?;
        Ok(inner)
    }

    fn attr_expr(&mut self, parent: Option<AttrRef>) -> PResult<Filter> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(format!("filter has more than {MAX_TERMS} comparisons"));
        }
        let name = match self.next() {
            Some(Token::Word(w)) => w,
            Some(t) => {
                return Err(format!(
                    "expected an attribute name, found {}",
                    t.describe()
                ));
            }
            None => return Err("expected an attribute name, found the end of the filter".into()),
        };
        if matches!(self.peek(), Some(Token::LBracket)) {
            if parent.is_some() {
                return Err("value filters cannot be nested".into());
            }
            return self.value_path(&name);
        }
        let path = resolve_path(self.resolve, &name, parent)?;
        self.comparison(path)
    }

    fn comparison(&mut self, path: AttrPath) -> PResult<Filter> {
        let op_word = match self.next() {
            Some(Token::Word(w)) => w,
            Some(t) => {
                return Err(format!(
                    "expected an operator after '{}', found {}",
                    path.display(),
                    t.describe()
                ));
            }
            None => return Err(format!("expected an operator after '{}'", path.display())),
        };
        if op_word.eq_ignore_ascii_case("pr") {
            return Ok(Filter::Present(path));
        }
        let op = CompareOp::parse(&op_word).ok_or_else(|| {
            format!(
                "unknown operator '{}'",
                op_word.chars().take(32).collect::<String>()
            )
        })?;
        let value = match self.next() {
            Some(Token::Str(s)) => CompValue::Str(s),
            Some(Token::Num(n)) => CompValue::Num(n),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("true") => CompValue::Bool(true),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("false") => CompValue::Bool(false),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("null") => CompValue::Null,
            Some(t) => {
                return Err(format!(
                    "expected a value after '{}', found {}",
                    op.as_str(),
                    t.describe()
                ));
            }
            None => return Err(format!("expected a value after '{}'", op.as_str())),
        };
        // Entra ID writes booleans as strings: `roles[primary eq "True"].value`.
        let value = match value {
            CompValue::Str(s)
                if path.leaf().ty == AttrType::Boolean
                    && (s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false")) =>
            {
                CompValue::Bool(s.eq_ignore_ascii_case("true"))
            }
            other => other,
        };
        check_comparison(&path, op, &value)?;
        Ok(Filter::Compare(path, op, value))
    }

    /// `emails[type eq "work"]`, and the form Entra ID sends,
    /// `emails[type eq "work"].value eq "a@b.c"`, read as
    /// `emails[type eq "work" and value eq "a@b.c"]`.
    fn value_path(&mut self, name: &str) -> PResult<Filter> {
        let (attr, sub) = (self.resolve)(name).ok_or_else(|| unknown_attr(name))?;
        if sub.is_some() || attr.attr.ty != AttrType::Complex || !attr.attr.multi_valued {
            return Err(format!(
                "'{name}' is not a multi-valued complex attribute and takes no value filter"
            ));
        }
        self.expect(Token::LBracket, "'['")?;
        self.enter()?;
        let inner = self.filter(Some(attr))?;
        self.depth -= 1;
        self.expect(Token::RBracket, "']'")?;
        let inner = match self.peek() {
            Some(Token::Word(w)) if w.starts_with('.') => {
                let sub_name = w[1..].to_string();
                self.pos += 1;
                let sub = attr
                    .attr
                    .sub_attr(&sub_name)
                    .ok_or_else(|| unknown_attr(&format!("{name}.{sub_name}")))?;
                let cmp = self.comparison(AttrPath {
                    attr,
                    sub: Some(sub),
                })?;
                Filter::And(Box::new(inner), Box::new(cmp))
            }
            _ => inner,
        };
        Ok(Filter::ValuePath(attr, Box::new(inner)))
    }

    fn patch_path(&mut self) -> PResult<PatchPath> {
        let name = match self.next() {
            Some(Token::Word(w)) => w,
            Some(t) => {
                return Err(format!(
                    "expected an attribute name, found {}",
                    t.describe()
                ));
            }
            None => return Err("path is empty".into()),
        };
        if !matches!(self.peek(), Some(Token::LBracket)) {
            let path = resolve_path(self.resolve, &name, None)?;
            return Ok(PatchPath::Attr {
                attr: path.attr,
                filter: None,
                sub: path.sub,
            });
        }
        let (attr, sub) = (self.resolve)(&name).ok_or_else(|| unknown_attr(&name))?;
        if sub.is_some() || attr.attr.ty != AttrType::Complex || !attr.attr.multi_valued {
            return Err(format!(
                "'{name}' is not a multi-valued complex attribute and takes no value filter"
            ));
        }
        self.expect(Token::LBracket, "'['")?;
        self.enter()?;
        let filter = self.filter(Some(attr))?;
        self.depth -= 1;
        self.expect(Token::RBracket, "']'")?;
        let sub = match self.next() {
            None => None,
            Some(Token::Word(w)) if w.starts_with('.') => Some(
                attr.attr
                    .sub_attr(&w[1..])
                    .ok_or_else(|| unknown_attr(&format!("{name}{w}")))?,
            ),
            Some(t) => return Err(format!("unexpected {} after ']'", t.describe())),
        };
        Ok(PatchPath::Attr {
            attr,
            filter: Some(filter),
            sub,
        })
    }
}

fn unknown_attr(name: &str) -> String {
    format!(
        "unknown attribute '{}'",
        name.chars().take(128).collect::<String>()
    )
}

/// Resolve a name at top level, or inside a value filter relative to `parent`.
fn resolve_path(resolve: Resolver, name: &str, parent: Option<AttrRef>) -> PResult<AttrPath> {
    if let Some(parent) = parent {
        // Inside `emails[...]` names are the element's sub-attributes; a fully
        // qualified `emails.type` is accepted too.
        let sub = parent.attr.sub_attr(name).or_else(|| {
            resolve(name)
                .filter(|(a, _)| *a == parent)
                .and_then(|(_, s)| s)
        });
        return sub
            .map(|s| AttrPath {
                attr: parent,
                sub: Some(s),
            })
            .ok_or_else(|| unknown_attr(name));
    }
    let (attr, sub) = resolve(name).ok_or_else(|| unknown_attr(name))?;
    Ok(AttrPath { attr, sub })
}

/// Reject comparisons that cannot mean anything for the attribute's type.
fn check_comparison(path: &AttrPath, op: CompareOp, value: &CompValue) -> PResult<()> {
    let leaf = path.leaf();
    let name = path.display();
    if leaf.returned == schema::Returned::Never {
        return Err(format!("'{name}' cannot be used in a filter"));
    }
    if leaf.ty == AttrType::Complex {
        // `emails eq "x"` compares the elements' `value`; a singular complex has none.
        if !(leaf.multi_valued && leaf.sub_attr("value").is_some()) {
            return Err(format!(
                "'{name}' is a complex attribute: compare one of its sub-attributes"
            ));
        }
    }
    if matches!(value, CompValue::Null) {
        return match op {
            CompareOp::Eq | CompareOp::Ne => Ok(()),
            _ => Err(format!("'{}' cannot compare with null", op.as_str())),
        };
    }
    let ty = if leaf.ty == AttrType::Complex {
        AttrType::String
    } else {
        leaf.ty
    };
    match ty {
        AttrType::Boolean => {
            if !matches!(op, CompareOp::Eq | CompareOp::Ne) {
                return Err(format!("'{name}' is boolean: only eq and ne apply"));
            }
            if !matches!(value, CompValue::Bool(_)) {
                return Err(format!(
                    "'{name}' is boolean: compare it with true or false"
                ));
            }
        }
        AttrType::Integer | AttrType::Decimal => {
            if op.is_substring() {
                return Err(format!("'{name}' is numeric: co, sw and ew do not apply"));
            }
            match value {
                CompValue::Num(n) if ty == AttrType::Integer && !(n.is_i64() || n.is_u64()) => {
                    return Err(format!(
                        "'{name}' is an integer: compare it with an integer"
                    ));
                }
                CompValue::Num(_) => {}
                _ => return Err(format!("'{name}' is numeric: compare it with a number")),
            }
        }
        AttrType::DateTime => {
            if op.is_substring() {
                return Err(format!(
                    "'{name}' is a dateTime: co, sw and ew do not apply"
                ));
            }
            match value {
                CompValue::Str(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => {}
                _ => {
                    return Err(format!(
                        "'{name}' is a dateTime: compare it with an RFC 3339 date-time string"
                    ));
                }
            }
        }
        AttrType::Binary => {
            if op.is_ordering() {
                return Err(format!(
                    "'{name}' is binary: gt, ge, lt and le do not apply"
                ));
            }
            if !matches!(value, CompValue::Str(_)) {
                return Err(format!("'{name}' is binary: compare it with a string"));
            }
        }
        AttrType::String | AttrType::Reference | AttrType::Complex => {
            if !matches!(value, CompValue::Str(_)) {
                return Err(format!(
                    "'{name}' is a string: compare it with a quoted string"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Filter {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn err(s: &str) -> String {
        let e = parse(s).expect_err(s);
        assert_eq!(
            e.scim_type,
            Some(super::super::error::ScimType::InvalidFilter)
        );
        e.detail
    }

    #[test]
    fn parses_simple_comparisons() {
        match p(r#"userName eq "bjensen""#) {
            Filter::Compare(path, CompareOp::Eq, CompValue::Str(v)) => {
                assert_eq!(path.attr.attr.name, "userName");
                assert_eq!(v, "bjensen");
            }
            f => panic!("{f:?}"),
        }
        for op in [
            "eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le", "EQ", "Sw",
        ] {
            p(&format!(r#"name.familyName {op} "O'Malley""#));
        }
        p("title pr");
        p(r#"meta.lastModified gt "2011-05-13T04:42:34Z""#);
        p("active eq true");
        p("active eq FALSE");
        p("urn:ietf:params:scim:schemas:extension:ameyo:2.0:User:maxAllowedLogins ge 2");
        p(r#"urn:ietf:params:scim:schemas:core:2.0:User:userName sw "J""#);
        p(r#"externalId eq "a\"b\\c""#);
    }

    #[test]
    fn precedence_and_grouping() {
        // and binds tighter than or
        match p(r#"title pr or userType eq "Intern" and active eq true"#) {
            Filter::Or(_, right) => assert!(matches!(*right, Filter::And(..))),
            f => panic!("{f:?}"),
        }
        match p(r#"(title pr or userType eq "Intern") and active eq true"#) {
            Filter::And(left, _) => assert!(matches!(*left, Filter::Or(..))),
            f => panic!("{f:?}"),
        }
        assert!(matches!(p(r#"not (userName eq "x")"#), Filter::Not(_)));
        assert!(matches!(p(r#"not(userName eq "x")"#), Filter::Not(_)));
    }

    #[test]
    fn value_paths() {
        match p(r#"emails[type eq "work" and value co "@example.com"]"#) {
            Filter::ValuePath(a, inner) => {
                assert_eq!(a.attr.name, "emails");
                assert!(matches!(*inner, Filter::And(..)));
            }
            f => panic!("{f:?}"),
        }
        // Entra ID's form
        match p(r#"emails[type eq "work"].value eq "a@b.c""#) {
            Filter::ValuePath(_, inner) => match *inner {
                Filter::And(_, cmp) => match *cmp {
                    Filter::Compare(path, CompareOp::Eq, _) => {
                        assert_eq!(path.sub.unwrap().name, "value")
                    }
                    f => panic!("{f:?}"),
                },
                f => panic!("{f:?}"),
            },
            f => panic!("{f:?}"),
        }
        p(
            r#"userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")"#,
        );
        p(
            r#"emails[type eq "work" and value co "@example.com"] or ims[type eq "xmpp" and value co "@foo.com"]"#,
        );
    }

    #[test]
    fn rejects_bad_filters() {
        assert!(err("").contains("expected an attribute"));
        assert!(err(r#"userName eq"#).contains("expected a value"));
        assert!(err(r#"userName zz "x""#).contains("unknown operator"));
        assert!(err(r#"nosuch eq "x""#).contains("unknown attribute"));
        assert!(err(r#"userName eq "x" garbage"#).contains("unexpected"));
        assert!(err(r#"userName eq "x"#).contains("unterminated"));
        assert!(err(r#"(userName eq "x""#).contains("expected ')'"));
        assert!(err(r#"active gt true"#).contains("boolean"));
        assert!(err(r#"active eq "yes""#).contains("boolean"));
        assert!(err(r#"name eq "x""#).contains("complex"));
        assert!(err(r#"password eq "x""#).contains("cannot be used"));
        assert!(err(r#"userName eq 1"#).contains("string"));
        assert!(err(r#"meta.created gt "yesterday""#).contains("dateTime"));
        assert!(err(r#"name[givenName eq "x"]"#).contains("multi-valued"));
        assert!(err(r#"emails[type eq "work" and emails[value eq "x"]]"#).contains("nested"));
        assert!(err(r#"userName eq "x"; DROP TABLE users"#).contains("unexpected character"));
        assert!(err("userName eq 'x'").contains("unexpected character"));
    }

    #[test]
    fn bounds_are_enforced() {
        let deep = format!("{}userName eq \"x\"{}", "(".repeat(100), ")".repeat(100));
        assert!(err(&deep).contains("nested deeper"));
        let nots = format!("{}userName eq \"x\"{}", "not (".repeat(40), ")".repeat(40));
        assert!(err(&nots).contains("nested deeper"));
        let many = vec![r#"userName eq "x""#; 100].join(" or ");
        assert!(err(&many).contains("more than"));
        let long = format!(r#"userName eq "{}""#, "a".repeat(5000));
        assert!(err(&long).contains("longer than"));
    }

    #[test]
    fn patch_paths() {
        match parse_patch_path(r#"emails[type eq "work"].value"#).unwrap() {
            PatchPath::Attr { attr, filter, sub } => {
                assert_eq!(attr.attr.name, "emails");
                assert!(filter.is_some());
                assert_eq!(sub.unwrap().name, "value");
            }
            p => panic!("{p:?}"),
        }
        match parse_patch_path("name.givenName").unwrap() {
            PatchPath::Attr { attr, filter, sub } => {
                assert_eq!(attr.attr.name, "name");
                assert!(filter.is_none());
                assert_eq!(sub.unwrap().name, "givenName");
            }
            p => panic!("{p:?}"),
        }
        match parse_patch_path("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager")
            .unwrap()
        {
            PatchPath::Attr { attr, .. } => assert_eq!(attr.attr.name, "manager"),
            p => panic!("{p:?}"),
        }
        assert!(matches!(
            parse_patch_path("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User").unwrap(),
            PatchPath::Extension(_)
        ));
        for bad in [
            "",
            "nosuch",
            "name.nosuch",
            "emails[",
            "emails[type eq \"work\"]x",
            "name[givenName eq \"x\"]",
        ] {
            let e = parse_patch_path(bad).expect_err(bad);
            assert_eq!(
                e.scim_type,
                Some(super::super::error::ScimType::InvalidPath),
                "{bad}"
            );
        }
    }
}
