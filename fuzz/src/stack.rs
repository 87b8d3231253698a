//! The structured input of the `stack` target: a few layers of a few entries
//! over a tiny alphabet (`a`, `b`, `c`, `.h`), so that entries collide, and
//! every name form the rules treat specially: whiteouts, opaque markers,
//! `.`, `..`, bare `.wh.`, `.wh..`, `.wh...`, AUFS metadata, `/` and `./`
//! prefixes, trailing slashes; symlink targets that are relative, absolute,
//! escaping or looping; hardlinks; devices (0/0 included); setuid and odd
//! modes; owners; xattrs, overlay-private ones included.

use arbitrary::Arbitrary;
use overlayer_harness::case::{EntryType, TarEntry};

pub const MAX_LAYERS: usize = 4;
pub const MAX_ENTRIES: usize = 10;
pub const MAX_COMPONENTS: usize = 4;

#[derive(Arbitrary, Debug)]
pub struct StackInput {
    /// Convert with xattr whiteouts (Linux 6.7+) instead of char devices.
    pub xwhiteouts: bool,
    pub layers: Vec<LayerInput>,
}

#[derive(Arbitrary, Debug)]
pub struct LayerInput {
    pub entries: Vec<EntryInput>,
}

#[derive(Arbitrary, Debug)]
pub struct EntryInput {
    pub path: PathInput,
    pub kind: KindInput,
    pub mode: ModeInput,
    pub owner: bool,
    pub mtime: u8,
    pub xattr: Option<XattrInput>,
}

#[derive(Arbitrary, Debug)]
pub struct PathInput {
    pub lead: Lead,
    pub comps: Vec<Comp>,
    pub trailing_slash: bool,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Lead {
    None,
    Dot,
    Slash,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Name {
    A,
    B,
    C,
    Hidden,
}

impl Name {
    fn text(self) -> &'static str {
        match self {
            Name::A => "a",
            Name::B => "b",
            Name::C => "c",
            Name::Hidden => ".h",
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Comp {
    Name(Name),
    Name2(Name),
    Name3(Name),
    Whiteout(Name),
    Opaque,
    Dot,
    DotDot,
    BareWhiteout,
    WhiteoutOfDot,
    WhiteoutOfDotDot,
    /// `.wh..wh.` (a whiteout of a file named `.wh.`)
    WhiteoutOfWh,
    /// `.wh..wh.plnk` (AUFS metadata)
    Aufs,
    /// `.wh.` + name as an inner component, or a file named `.wh.` itself
    WhName,
}

impl Comp {
    fn text(self) -> String {
        match self {
            Comp::Name(n) | Comp::Name2(n) | Comp::Name3(n) => n.text().into(),
            Comp::Whiteout(n) => format!(".wh.{}", n.text()),
            Comp::Opaque => ".wh..wh..opq".into(),
            Comp::Dot => ".".into(),
            Comp::DotDot => "..".into(),
            Comp::BareWhiteout => ".wh.".into(),
            Comp::WhiteoutOfDot => ".wh..".into(),
            Comp::WhiteoutOfDotDot => ".wh...".into(),
            Comp::WhiteoutOfWh => ".wh..wh.".into(),
            Comp::Aufs => ".wh..wh.plnk".into(),
            Comp::WhName => ".wh.".into(),
        }
    }
}

impl PathInput {
    pub fn render(&self) -> String {
        let mut s = String::from(match self.lead {
            Lead::None => "",
            Lead::Dot => "./",
            Lead::Slash => "/",
        });
        let comps: Vec<String> = self
            .comps
            .iter()
            .take(MAX_COMPONENTS)
            .map(|c| c.text())
            .collect();
        s.push_str(&comps.join("/"));
        if self.trailing_slash && !s.ends_with('/') {
            s.push('/');
        }
        s
    }
}

#[derive(Arbitrary, Debug)]
pub enum KindInput {
    File(u8),
    Dir,
    Symlink(PathInput),
    /// A symlink to a fixed hostile target.
    SymlinkTo(Hostile),
    Hardlink(PathInput),
    Fifo,
    Char(u8, u8),
    Block(u8, u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Hostile {
    Root,
    Parent,
    Escape,
    AbsVictim,
    ProcSelfRoot,
    SelfLoop,
    Empty,
}

impl Hostile {
    fn text(self) -> &'static str {
        match self {
            Hostile::Root => "/",
            Hostile::Parent => "..",
            Hostile::Escape => "../../../victim",
            Hostile::AbsVictim => "/victim",
            Hostile::ProcSelfRoot => "/proc/self/root/etc",
            Hostile::SelfLoop => "a/a",
            Hostile::Empty => "",
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum ModeInput {
    Default,
    M600,
    M700,
    M4755,
    M2750,
    M1777,
    M000,
}

impl ModeInput {
    fn text(self) -> Option<&'static str> {
        match self {
            ModeInput::Default => None,
            ModeInput::M600 => Some("0600"),
            ModeInput::M700 => Some("0700"),
            ModeInput::M4755 => Some("4755"),
            ModeInput::M2750 => Some("2750"),
            ModeInput::M1777 => Some("1777"),
            ModeInput::M000 => Some("0000"),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum XattrInput {
    UserA1,
    UserA2,
    UserB,
    TrustedX,
    TrustedOverlayOpaque,
    TrustedOverlayRedirect,
    UserOverlayOpaque,
    TrustedOverlayWhiteout,
}

impl XattrInput {
    fn pair(self) -> (&'static str, &'static str) {
        match self {
            XattrInput::UserA1 => ("user.a", "1"),
            XattrInput::UserA2 => ("user.a", "2"),
            XattrInput::UserB => ("user.b", "hex:00ff"),
            XattrInput::TrustedX => ("trusted.x", "x"),
            XattrInput::TrustedOverlayOpaque => ("trusted.overlay.opaque", "y"),
            XattrInput::TrustedOverlayRedirect => ("trusted.overlay.redirect", "/a"),
            XattrInput::UserOverlayOpaque => ("user.overlay.opaque", "y"),
            XattrInput::TrustedOverlayWhiteout => ("trusted.overlay.whiteout", ""),
        }
    }
}

const TEXTS: [&str; 4] = ["", "x", "yy", "hello world"];

impl StackInput {
    /// The layers as case entries (bottom first).
    pub fn to_layers(&self) -> Vec<Vec<TarEntry>> {
        self.layers
            .iter()
            .take(MAX_LAYERS)
            .map(|l| l.entries.iter().take(MAX_ENTRIES).map(to_entry).collect())
            .collect()
    }
}

fn to_entry(e: &EntryInput) -> TarEntry {
    let mut t = TarEntry {
        path: e.path.render(),
        mode: e.mode.text().map(String::from),
        uid: if e.owner { 1000 } else { 0 },
        gid: if e.owner { 1000 } else { 0 },
        mtime: i64::from(e.mtime) * 1_000_000,
        ..Default::default()
    };
    match &e.kind {
        KindInput::File(n) => t.text = TEXTS[usize::from(*n) % TEXTS.len()].into(),
        KindInput::Dir => t.kind = EntryType::Dir,
        KindInput::Symlink(p) => {
            t.kind = EntryType::Symlink;
            t.target = Some(p.render());
        }
        KindInput::SymlinkTo(h) => {
            t.kind = EntryType::Symlink;
            t.target = Some(h.text().into());
        }
        KindInput::Hardlink(p) => {
            t.kind = EntryType::Hardlink;
            t.target = Some(p.render());
        }
        KindInput::Fifo => t.kind = EntryType::Fifo,
        KindInput::Char(a, b) => {
            t.kind = EntryType::Char;
            t.rdev = Some([u32::from(*a % 3), u32::from(*b % 3)]);
        }
        KindInput::Block(a, b) => {
            t.kind = EntryType::Block;
            t.rdev = Some([u32::from(*a % 3) + 7, u32::from(*b % 3)]);
        }
    }
    // xattrs on files and directories only: Linux refuses user.* on
    // symlinks and special files, which no layer rule is about.
    if let Some(x) = e.xattr {
        if matches!(t.kind, EntryType::File | EntryType::Dir) {
            let (k, v) = x.pair();
            t.xattrs.insert(k.into(), v.into());
        }
    }
    t
}
