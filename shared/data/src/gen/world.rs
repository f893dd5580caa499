//! Fixed "world" data shared by the generator and the mock executor in
//! `fc-rewards` (cities, currencies with fixed rates, tickers, ...), plus
//! small date helpers. Keeping it in one place guarantees that every value
//! the generator puts in an answer is one the executor accepts.

/// A known city: name, ISO country code, latitude, longitude, IANA zone,
/// UTC offset in minutes (standard time).
pub struct City {
    pub name: &'static str,
    pub country: &'static str,
    pub lat: f64,
    pub lon: f64,
    pub tz: &'static str,
    pub utc_offset_min: i32,
}

const fn c(name: &'static str, country: &'static str, lat: f64, lon: f64, tz: &'static str, off: i32) -> City {
    City {
        name,
        country,
        lat,
        lon,
        tz,
        utc_offset_min: off,
    }
}

pub static CITIES: &[City] = &[
    c("Paris", "FR", 48.8566, 2.3522, "Europe/Paris", 60),
    c("London", "GB", 51.5072, -0.1276, "Europe/London", 0),
    c("New York", "US", 40.7128, -74.0060, "America/New_York", -300),
    c("Tokyo", "JP", 35.6762, 139.6503, "Asia/Tokyo", 540),
    c("Berlin", "DE", 52.5200, 13.4050, "Europe/Berlin", 60),
    c("Madrid", "ES", 40.4168, -3.7038, "Europe/Madrid", 60),
    c("Rome", "IT", 41.9028, 12.4964, "Europe/Rome", 60),
    c("Sydney", "AU", -33.8688, 151.2093, "Australia/Sydney", 600),
    c("Toronto", "CA", 43.6532, -79.3832, "America/Toronto", -300),
    c("Chicago", "US", 41.8781, -87.6298, "America/Chicago", -360),
    c("San Francisco", "US", 37.7749, -122.4194, "America/Los_Angeles", -480),
    c("Los Angeles", "US", 34.0522, -118.2437, "America/Los_Angeles", -480),
    c("Mumbai", "IN", 19.0760, 72.8777, "Asia/Kolkata", 330),
    c("Beijing", "CN", 39.9042, 116.4074, "Asia/Shanghai", 480),
    c("Shanghai", "CN", 31.2304, 121.4737, "Asia/Shanghai", 480),
    c("Seoul", "KR", 37.5665, 126.9780, "Asia/Seoul", 540),
    c("Singapore", "SG", 1.3521, 103.8198, "Asia/Singapore", 480),
    c("Dubai", "AE", 25.2048, 55.2708, "Asia/Dubai", 240),
    c("Cairo", "EG", 30.0444, 31.2357, "Africa/Cairo", 120),
    c("Nairobi", "KE", -1.2921, 36.8219, "Africa/Nairobi", 180),
    c("São Paulo", "BR", -23.5558, -46.6396, "America/Sao_Paulo", -180),
    c("Mexico City", "MX", 19.4326, -99.1332, "America/Mexico_City", -360),
    c("Buenos Aires", "AR", -34.6037, -58.3816, "America/Argentina/Buenos_Aires", -180),
    c("Amsterdam", "NL", 52.3676, 4.9041, "Europe/Amsterdam", 60),
    c("Vienna", "AT", 48.2082, 16.3738, "Europe/Vienna", 60),
    c("Prague", "CZ", 50.0755, 14.4378, "Europe/Prague", 60),
    c("Istanbul", "TR", 41.0082, 28.9784, "Europe/Istanbul", 180),
    c("Bangkok", "TH", 13.7563, 100.5018, "Asia/Bangkok", 420),
    c("Lisbon", "PT", 38.7223, -9.1393, "Europe/Lisbon", 0),
    c("Stockholm", "SE", 59.3293, 18.0686, "Europe/Stockholm", 60),
    c("Zurich", "CH", 47.3769, 8.5417, "Europe/Zurich", 60),
    c("Boston", "US", 42.3601, -71.0589, "America/New_York", -300),
    c("Seattle", "US", 47.6062, -122.3321, "America/Los_Angeles", -480),
    c("Miami", "US", 25.7617, -80.1918, "America/New_York", -300),
    c("Vancouver", "CA", 49.2827, -123.1207, "America/Vancouver", -480),
    c("Barcelona", "ES", 41.3874, 2.1686, "Europe/Madrid", 60),
    c("Munich", "DE", 48.1351, 11.5820, "Europe/Berlin", 60),
    c("Lyon", "FR", 45.7640, 4.8357, "Europe/Paris", 60),
    c("Osaka", "JP", 34.6937, 135.5023, "Asia/Tokyo", 540),
    c("Cape Town", "ZA", -33.9249, 18.4241, "Africa/Johannesburg", 120),
];

/// Looks a city up by name (case-insensitive, surrounding space ignored).
pub fn city(name: &str) -> Option<&'static City> {
    let n = name.trim();
    if let Some(c) = CITIES.iter().find(|c| c.name.eq_ignore_ascii_case(n)) {
        return Some(c);
    }
    if n.is_ascii() {
        return None;
    }
    // Non-ASCII names (São Paulo): Unicode-aware comparison, allocating only here.
    let lower = n.to_lowercase();
    CITIES.iter().find(|c| !c.name.is_ascii() && c.name.to_lowercase() == lower)
}

/// Currency codes and fixed rates (units per 1 USD).
pub static CURRENCIES: &[(&str, f64)] = &[
    ("USD", 1.0),
    ("EUR", 0.92),
    ("GBP", 0.79),
    ("JPY", 151.2),
    ("CHF", 0.88),
    ("CAD", 1.36),
    ("AUD", 1.52),
    ("CNY", 7.23),
    ("INR", 83.4),
    ("MXN", 17.1),
    ("BRL", 5.05),
    ("KRW", 1350.0),
    ("SEK", 10.6),
    ("NOK", 10.8),
    ("SGD", 1.35),
];

/// Currency codes only (for generator picks).
pub static CURRENCY_CODES: &[&str] = &[
    "USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "CNY", "INR", "MXN", "BRL", "KRW", "SEK", "NOK", "SGD",
];

/// Units of `code` per 1 USD.
pub fn currency_rate(code: &str) -> Option<f64> {
    let c = code.trim();
    CURRENCIES.iter().find(|(k, _)| k.eq_ignore_ascii_case(c)).map(|(_, r)| *r)
}

/// Ticker, company, sector, reference price in USD.
pub static TICKERS: &[(&str, &str, &str, f64)] = &[
    ("AAPL", "Apple Inc.", "Technology", 189.5),
    ("MSFT", "Microsoft Corporation", "Technology", 412.3),
    ("GOOGL", "Alphabet Inc.", "Communication Services", 151.2),
    ("AMZN", "Amazon.com Inc.", "Consumer Cyclical", 178.9),
    ("TSLA", "Tesla Inc.", "Automotive", 175.4),
    ("NVDA", "NVIDIA Corporation", "Technology", 880.1),
    ("META", "Meta Platforms Inc.", "Communication Services", 497.6),
    ("NFLX", "Netflix Inc.", "Communication Services", 612.0),
    ("IBM", "International Business Machines", "Technology", 186.7),
    ("INTC", "Intel Corporation", "Technology", 35.2),
    ("ORCL", "Oracle Corporation", "Technology", 124.9),
    ("AMD", "Advanced Micro Devices", "Technology", 162.4),
    ("DIS", "The Walt Disney Company", "Communication Services", 112.8),
    ("KO", "The Coca-Cola Company", "Consumer Defensive", 60.3),
    ("PEP", "PepsiCo Inc.", "Consumer Defensive", 168.1),
    ("V", "Visa Inc.", "Financial Services", 275.5),
    ("JPM", "JPMorgan Chase & Co.", "Financial Services", 196.2),
    ("BA", "The Boeing Company", "Industrials", 181.3),
    ("NKE", "Nike Inc.", "Consumer Cyclical", 93.4),
    ("SBUX", "Starbucks Corporation", "Consumer Cyclical", 88.6),
];

/// Ticker symbols only.
pub static TICKER_SYMBOLS: &[&str] = &[
    "AAPL", "MSFT", "GOOGL", "AMZN", "TSLA", "NVDA", "META", "NFLX", "IBM", "INTC", "ORCL", "AMD", "DIS", "KO",
    "PEP", "V", "JPM", "BA", "NKE", "SBUX",
];

/// Looks up a ticker (case-insensitive).
pub fn ticker(sym: &str) -> Option<&'static (&'static str, &'static str, &'static str, f64)> {
    let s = sym.trim();
    TICKERS.iter().find(|t| t.0.eq_ignore_ascii_case(s))
}

pub static COUNTRIES: &[&str] = &[
    "France", "Germany", "Spain", "Italy", "Japan", "United States", "Canada", "Brazil", "India", "China",
    "Australia", "Mexico", "Egypt", "Kenya", "Thailand", "Turkey", "Portugal", "Sweden", "Switzerland",
    "South Korea", "Argentina", "Netherlands",
];

pub static COUNTRY_CODES: &[&str] = &["US", "GB", "FR", "DE", "ES", "IT", "JP", "CA", "AU", "BR"];

pub static LEAGUES: &[&str] = &[
    "Premier League", "La Liga", "Bundesliga", "Serie A", "Ligue 1", "NBA", "NFL", "MLB", "NHL",
];

pub static TEAMS: &[&str] = &[
    "Real Madrid", "FC Barcelona", "Manchester United", "Liverpool", "Arsenal", "Bayern Munich",
    "Juventus", "Paris Saint-Germain", "Los Angeles Lakers", "Golden State Warriors", "Boston Celtics",
    "Chicago Bulls", "New England Patriots", "Dallas Cowboys", "New York Yankees", "Toronto Maple Leafs",
];

pub static PLAYERS: &[&str] = &[
    "Lionel Messi", "Cristiano Ronaldo", "Kylian Mbappé", "Erling Haaland", "LeBron James",
    "Stephen Curry", "Patrick Mahomes", "Shohei Ohtani", "Connor McDavid", "Mohamed Salah",
    "Harry Kane", "Giannis Antetokounmpo",
];

pub static ARTISTS: &[&str] = &[
    "Taylor Swift", "The Beatles", "Adele", "Ed Sheeran", "Beyoncé", "Coldplay", "Daft Punk",
    "Miles Davis", "Shakira", "BTS", "Queen", "Billie Eilish", "Bad Bunny", "Radiohead",
];

pub static ALBUMS: &[&str] = &[
    "Abbey Road", "1989", "21", "Random Access Memories", "Kind of Blue", "A Night at the Opera",
    "OK Computer", "Lemonade", "Divide", "Parachutes", "Happier Than Ever", "Un Verano Sin Ti",
];

pub static SONGS: &[&str] = &[
    "Yesterday", "Shake It Off", "Rolling in the Deep", "Shape of You", "Halo", "Yellow", "Get Lucky",
    "So What", "Hips Don't Lie", "Dynamite", "Bohemian Rhapsody", "Bad Guy", "Karma Police", "Let It Be",
    "Clocks", "Hello",
];

pub static SONG_QUERIES: &[&str] = &[
    "summer road trip", "jazz piano", "love ballads", "workout hits", "lo-fi beats", "90s rock",
    "acoustic covers", "latin pop", "classical for studying", "rainy day",
];

pub static PLAYLIST_NAMES: &[&str] = &[
    "Morning Run", "Chill Evenings", "Focus Mode", "Party Mix", "Road Trip 2025", "Sunday Brunch",
];

pub static PRODUCTS: &[&str] = &[
    "wireless headphones", "running shoes", "coffee maker", "yoga mat", "mechanical keyboard",
    "electric toothbrush", "backpack", "smart watch", "desk lamp", "water bottle", "air fryer",
    "bluetooth speaker",
];

pub static SEARCH_TOPICS: &[&str] = &[
    "best hiking trails near Denver", "how to learn Rust programming", "history of the Roman Empire",
    "electric car tax credits", "healthy breakfast ideas", "how solar panels work",
    "tips for remote work productivity", "the tallest buildings in the world", "how to grow tomatoes",
    "symptoms of dehydration",
];

pub static NEWS_TOPICS: &[&str] = &[
    "artificial intelligence", "climate change", "stock market", "space exploration",
    "renewable energy", "electric vehicles", "the World Cup", "cybersecurity", "inflation",
];

pub static IMAGE_QUERIES: &[&str] = &[
    "golden retriever puppies", "northern lights", "Eiffel Tower at night", "mountain lakes",
    "vintage cars", "tropical beaches", "modern kitchen designs",
];

pub static WIKI_TITLES: &[&str] = &[
    "Albert Einstein", "Photosynthesis", "Mount Everest", "Great Wall of China", "Marie Curie",
    "Quantum computing", "Amazon rainforest", "Leonardo da Vinci",
];

pub static INGREDIENTS: &[&str] = &[
    "chicken", "rice", "tomatoes", "spinach", "eggs", "garlic", "mushrooms", "pasta", "salmon",
    "potatoes", "chickpeas", "tofu", "cheese", "onions",
];

pub static JOB_TITLES: &[&str] = &[
    "software engineer", "data scientist", "product manager", "graphic designer", "nurse",
    "accountant", "marketing manager", "teacher",
];

pub static EVENT_TITLES: &[&str] = &[
    "Team standup", "Dentist appointment", "Project review", "Lunch with Sarah", "Quarterly planning",
    "Yoga class", "Parent-teacher meeting", "Budget sync",
];

pub static SUBJECTS: &[&str] = &[
    "Meeting notes", "Invoice for March", "Weekend plans", "Project update", "Happy birthday",
    "Travel itinerary",
];

pub static BODIES: &[&str] = &[
    "Please find the notes attached", "Can we move our call to Friday", "Thanks for your help today",
    "The report is ready for review", "See you at the conference",
];

pub static SHORT_MESSAGES: &[&str] = &[
    "Running 10 minutes late", "Dinner is at 7", "The build is green again", "Call me when you land",
    "Deploy finished successfully", "Don't forget the tickets",
];

pub static PHRASES: &[&str] = &[
    "Good morning", "Where is the train station", "Thank you very much", "How much does this cost",
    "I would like a coffee", "See you tomorrow",
];

pub static LANGUAGES: &[(&str, &str)] = &[
    ("Spanish", "es"),
    ("French", "fr"),
    ("German", "de"),
    ("Italian", "it"),
    ("Japanese", "ja"),
    ("Chinese", "zh"),
    ("Portuguese", "pt"),
];

pub static LANGUAGE_NAMES: &[&str] = &["Spanish", "French", "German", "Italian", "Japanese", "Chinese", "Portuguese"];

pub static REMINDERS: &[&str] = &[
    "call mom", "pay the electricity bill", "water the plants", "renew my passport",
    "pick up the dry cleaning", "book the vet appointment",
];

pub static PEOPLE: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar",
];

pub static EMAIL_DOMAINS: &[&str] = &["example.com", "acme.org", "mail.test", "company.io"];

// ---------------------------------------------------------------------------
// Dates (proleptic Gregorian, no external crate)
// ---------------------------------------------------------------------------

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

/// Parses a strict `YYYY-MM-DD` date into a day number; `None` when the
/// text is not a real calendar date.
pub fn parse_date(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = s.get(0..4)?.parse().ok()?;
    let m: u32 = s.get(5..7)?.parse().ok()?;
    let d: u32 = s.get(8..10)?.parse().ok()?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// Formats a day number as `YYYY-MM-DD`.
pub fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Day of week name (Monday..Sunday) of a day number.
pub fn weekday(days: i64) -> &'static str {
    // 1970-01-01 was a Thursday.
    const NAMES: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    NAMES[days.rem_euclid(7) as usize]
}

/// Parses `HH:MM` (24h) into minutes after midnight.
pub fn parse_time(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    (h < 24 && m < 60 && !s.trim().is_empty()).then_some(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_roundtrip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(parse_date("2024-02-29").map(format_date).as_deref(), Some("2024-02-29"));
        assert!(parse_date("2023-02-29").is_none());
        assert!(parse_date("2023-13-01").is_none());
        assert!(parse_date("tomorrow").is_none());
        assert_eq!(parse_date("2025-01-01").map(weekday), Some("Wednesday"));
        for d in -1000..40000 {
            assert_eq!(parse_date(&format_date(d)), Some(d));
        }
        assert_eq!(parse_time("09:30"), Some(570));
        assert!(parse_time("24:00").is_none());
    }
}
