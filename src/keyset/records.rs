//! The binary record of one key, as stored in shared data (digest first), and reading it.

use super::*;

pub(super) const F_REVOKED: u8 = 1;
pub(super) const F_EXPIRES: u8 = 2;
pub(super) const F_LIMITS: u8 = 4;
pub(super) const F_IPS: u8 = 8;
pub(super) const F_REFERERS: u8 = 16;
pub(super) const F_PATHS: u8 = 32;
pub(super) const F_ROLE: u8 = 64;
pub(super) const F_ENV: u8 = 128;
pub(super) const NONE16: u16 = u16::MAX;
/// The tags of the sections after a record's fields: its balance, its tenant's (as the key
/// service keeps it), and a balance's top-up.
const T_CREDITS: u8 = 1;
const T_TENANT_CREDITS: u8 = 2;
const T_TOP_UP: u8 = 3;

pub(super) fn put_str16(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            let b = s.as_bytes();
            let n = b.len().min(usize::from(NONE16 - 1));
            out.extend_from_slice(&(n as u16).to_le_bytes());
            out.extend_from_slice(b.get(..n).unwrap_or_default());
        }
        None => out.extend_from_slice(&NONE16.to_le_bytes()),
    }
}

pub(super) fn put_patterns(out: &mut Vec<u8>, patterns: &[Pattern]) {
    out.extend_from_slice(&(patterns.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
    for p in patterns.iter().take(usize::from(u16::MAX)) {
        match p {
            Pattern::Any => out.push(0),
            Pattern::Exact(s) => {
                out.push(1);
                put_str16(out, Some(s));
            }
            Pattern::Below(s) => {
                out.push(2);
                put_str16(out, Some(s));
            }
        }
    }
}

/// Appends the binary form of a validated record (digest first) to `out`.
pub fn encode_record(out: &mut Vec<u8>, digest: &Digest, rec: &KeyRecord, roles: &[Role]) {
    let role = rec.role.and_then(|r| roles.get(r)).map(|r| r.name.as_str());
    let mut flags = 0;
    for (on, bit) in [
        (rec.revoked, F_REVOKED),
        (rec.expires_at.is_some(), F_EXPIRES),
        (rec.rate_limits.is_some(), F_LIMITS),
        (rec.allowed_ips.is_some(), F_IPS),
        (rec.allowed_referers.is_some(), F_REFERERS),
        (rec.allowed_paths.is_some(), F_PATHS),
        (role.is_some(), F_ROLE),
        (rec.environment.is_some(), F_ENV),
    ] {
        if on {
            flags |= bit;
        }
    }
    out.extend_from_slice(digest);
    out.push(flags);
    put_str16(out, Some(&rec.id));
    put_str16(out, rec.name.as_deref());
    put_str16(out, rec.tenant.as_deref());
    if let Some(t) = rec.expires_at {
        out.extend_from_slice(&t.to_le_bytes());
    }
    if role.is_some() {
        put_str16(out, role);
    }
    if rec.environment.is_some() {
        put_str16(out, rec.environment.as_deref());
    }
    if let Some(limits) = &rec.rate_limits {
        // At most MAX_LIMITS (16) by validation, so the count fits a byte and nothing is cut.
        out.push(limits.len().min(usize::from(u8::MAX)) as u8);
        for l in limits.iter().take(usize::from(u8::MAX)) {
            out.extend_from_slice(&l.requests.to_le_bytes());
            out.push(l.per as u8);
        }
    }
    if let Some(ips) = &rec.allowed_ips {
        out.extend_from_slice(&(ips.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
        for c in ips.iter().take(usize::from(u16::MAX)) {
            let (net, bits) = c.parts();
            match net {
                IpAddr::V4(a) => {
                    out.push(4);
                    out.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    out.push(6);
                    out.extend_from_slice(&a.octets());
                }
            }
            out.push(bits);
        }
    }
    if let Some(p) = &rec.allowed_referers {
        put_patterns(out, p);
    }
    if let Some(p) = &rec.allowed_paths {
        put_patterns(out, p);
    }
    // The flags byte is full: balances follow as tagged sections, last and in tag order (a
    // filter that predates them refuses the record, so filters are upgraded before a key
    // service sends credits): granted, the refill (kind, day), the serial, then the top-up if
    // there is one, which only the record's end or the next tag ends.
    for (tag, c) in [
        (T_CREDITS, &rec.credits),
        (T_TENANT_CREDITS, &rec.tenant_credits),
    ] {
        if let Some(c) = c {
            out.push(tag);
            out.extend_from_slice(&c.granted.to_le_bytes());
            let (kind, day) = match c.refill {
                None => (0, 0),
                Some(Refill::Day) => (1, 0),
                Some(Refill::Month { day }) => (2, day),
            };
            out.extend_from_slice(&[kind, day]);
            out.extend_from_slice(&c.serial.to_le_bytes());
            if let Some((period, amount)) = c.top_up {
                out.push(T_TOP_UP);
                out.extend_from_slice(&period.to_le_bytes());
                out.extend_from_slice(&amount.to_le_bytes());
            }
        }
    }
}

pub(super) struct Cursor<'a>(pub(super) &'a [u8]);

impl<'a> Cursor<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }
    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes(
            b.try_into().map_err(|_| DecodeError::Truncated)?,
        ))
    }
    pub(super) fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| DecodeError::Truncated)?,
        ))
    }
    pub(super) fn str16(&mut self) -> Result<Option<String>, DecodeError> {
        let n = self.u16()?;
        if n == NONE16 {
            return Ok(None);
        }
        let b = self.take(usize::from(n))?;
        String::from_utf8(b.to_vec())
            .map(Some)
            .map_err(|_| DecodeError::BadValue)
    }
    /// The balance section `tag`, if it is next.
    fn balance(&mut self, tag: u8) -> Result<Option<Credits>, DecodeError> {
        if self.0.first() != Some(&tag) {
            return Ok(None);
        }
        self.take(1)?;
        let granted = self.u64()?;
        let refill = match (self.u8()?, self.u8()?) {
            (0, 0) => None,
            (1, 0) => Some(Refill::Day),
            (2, day @ 1..=31) => Some(Refill::Month { day }),
            _ => return Err(DecodeError::BadValue),
        };
        let serial = u32::from_le_bytes(
            self.take(4)?
                .try_into()
                .map_err(|_| DecodeError::Truncated)?,
        );
        // Its top-up: within what JSON takes (|amount| < 2^53).
        let top_up = if self.0.first() == Some(&T_TOP_UP) {
            self.take(1)?;
            let period = self.u64()?;
            let amount = self.u64()? as i64;
            if amount.unsigned_abs() >= 1 << 53 {
                return Err(DecodeError::BadValue);
            }
            Some((period, amount))
        } else {
            None
        };
        Ok(Some(Credits {
            granted,
            refill,
            top_up,
            serial,
        }))
    }

    pub(super) fn patterns(&mut self) -> Result<Vec<Pattern>, DecodeError> {
        let n = self.u16()?;
        let mut out = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            out.push(match self.u8()? {
                0 => Pattern::Any,
                1 => Pattern::Exact(self.str16()?.ok_or(DecodeError::BadValue)?),
                2 => Pattern::Below(self.str16()?.ok_or(DecodeError::BadValue)?),
                _ => return Err(DecodeError::BadValue),
            });
        }
        Ok(out)
    }
}

/// Decodes a record written by [`encode_record`]; its role is resolved against `roles`.
pub fn decode_record(bytes: &[u8], roles: &[Role]) -> Result<KeyRecord, DecodeError> {
    let mut c = Cursor(bytes);
    c.take(32)?;
    let flags = c.u8()?;
    let id = c
        .str16()?
        .filter(|id| !id.is_empty())
        .ok_or(DecodeError::BadValue)?;
    let name = c.str16()?;
    let tenant = c.str16()?;
    let expires_at = if flags & F_EXPIRES != 0 {
        Some(c.u64()? as i64)
    } else {
        None
    };
    let role = if flags & F_ROLE != 0 {
        let name = c.str16()?.ok_or(DecodeError::BadValue)?;
        Some(
            roles
                .iter()
                .position(|r| r.name == name)
                .ok_or(DecodeError::UnknownRole)?,
        )
    } else {
        None
    };
    let environment = if flags & F_ENV != 0 {
        Some(c.str16()?.ok_or(DecodeError::BadValue)?)
    } else {
        None
    };
    let rate_limits = if flags & F_LIMITS != 0 {
        let n = c.u8()?;
        let mut v = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let requests = c.u64()?;
            let per = *Per::ALL
                .get(usize::from(c.u8()?))
                .ok_or(DecodeError::BadValue)?;
            v.push(Limit { requests, per });
        }
        Some(v)
    } else {
        None
    };
    let allowed_ips = if flags & F_IPS != 0 {
        let n = c.u16()?;
        let mut v = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let net: IpAddr = match c.u8()? {
                4 => {
                    let b: [u8; 4] = c.take(4)?.try_into().map_err(|_| DecodeError::Truncated)?;
                    IpAddr::from(b)
                }
                6 => {
                    let b: [u8; 16] = c.take(16)?.try_into().map_err(|_| DecodeError::Truncated)?;
                    IpAddr::from(b)
                }
                _ => return Err(DecodeError::BadValue),
            };
            v.push(Cidr::from_parts(net, c.u8()?).ok_or(DecodeError::BadValue)?);
        }
        Some(v)
    } else {
        None
    };
    let allowed_referers = if flags & F_REFERERS != 0 {
        Some(c.patterns()?)
    } else {
        None
    };
    let allowed_paths = if flags & F_PATHS != 0 {
        Some(c.patterns()?)
    } else {
        None
    };
    let credits = c.balance(T_CREDITS)?;
    let tenant_credits = c.balance(T_TENANT_CREDITS)?;
    // As JSON refuses it: a tenant's balance on a key without a tenant.
    if tenant_credits.is_some() && tenant.is_none() {
        return Err(DecodeError::BadValue);
    }
    // One spelling per record: nothing may follow it (found by fuzzing).
    if !c.0.is_empty() {
        return Err(DecodeError::BadValue);
    }
    Ok(KeyRecord {
        id,
        name,
        tenant,
        role,
        environment,
        revoked: flags & F_REVOKED != 0,
        expires_at,
        rate_limits,
        allowed_ips,
        allowed_referers,
        allowed_paths,
        credits,
        tenant_credits,
    })
}

/// The id of an encoded record (after its digest and flags), without decoding the rest.
pub fn record_id(rec: &[u8]) -> Option<&str> {
    let len = u16::from_le_bytes(rec.get(33..35)?.try_into().ok()?);
    if len == NONE16 {
        return None;
    }
    std::str::from_utf8(rec.get(35..35 + usize::from(len))?).ok()
}

/// The records of a shard being built (each prefixed by its length).
pub(super) fn records_of(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let (rec, tail) = tail.split_at_checked(u32::from_le_bytes(*len) as usize)?;
        rest = tail;
        Some(rec)
    })
}
