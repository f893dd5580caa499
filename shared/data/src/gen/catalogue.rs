//! The synthetic tool catalogue: 72 xLAM-style tools in 12 categories, each
//! with query templates. Every sixth tool of a category is *held out*: it
//! never appears in the main generated set and is only used by
//! [`super::generate_heldout`], to measure generalization to unseen tools.
//!
//! Template syntax: `{param}` is replaced by the rendered argument value
//! (the argument is then part of the expected call); `[param=json]` sets a
//! fixed argument without rendering anything (for booleans expressed by the
//! wording). Required parameters appear in every template; optional ones
//! only in the templates that mention them.

use super::world as w;

/// How an argument value is generated.
#[derive(Debug, Clone, Copy)]
pub enum Gen {
    /// A known city name.
    City,
    /// A known city different from the value of another parameter.
    CityOther(&'static str),
    /// A `YYYY-MM-DD` date in 2025-2026.
    Date,
    /// A date `min..=max` days after another date parameter.
    DateAfter(&'static str, i64, i64),
    /// `HH:MM` on a quarter hour between 07:00 and 20:45.
    Time,
    /// Integer in `min..=max`.
    Int(i64, i64),
    /// Non-zero integer in `min..=max`.
    IntNonZero(i64, i64),
    /// One of the given integers.
    IntChoice(&'static [i64]),
    /// Number with up to two decimals in `min..max`.
    Float(f64, f64),
    /// One of the strings.
    Pick(&'static [&'static str]),
    /// One of the strings, different from another parameter's value.
    PickOther(&'static [&'static str], &'static str),
    /// An e-mail address.
    Email,
    /// A phone number.
    Phone,
    /// A product id `SKU-NNNNN`.
    Sku,
    /// An order id `ORD-NNNNNN`.
    OrderId,
    /// A flight number like `LH1234`.
    FlightNo,
    /// 3-8 integers in `min..=max`.
    IntList(i64, i64),
    /// 3-8 numbers with one decimal in `min..max`.
    FloatList(f64, f64),
    /// 2-4 distinct strings from the list.
    StrList(&'static [&'static str]),
    /// 1-3 `{product_id, quantity}` objects.
    OrderItems,
    /// A plausible temperature for the scale named by another parameter
    /// (never below absolute zero).
    TempFor(&'static str),
}

impl Gen {
    /// The parameter this generator depends on, if any (generated first).
    pub fn depends_on(&self) -> Option<&'static str> {
        match self {
            Gen::CityOther(p) | Gen::DateAfter(p, _, _) | Gen::PickOther(_, p) | Gen::TempFor(p) => Some(p),
            _ => None,
        }
    }
}

/// One tool parameter in xLAM's flat format.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    /// xLAM type string (`str`, `int, optional`, `List[float]`, ...).
    pub ty: &'static str,
    pub description: &'static str,
    pub gen: Gen,
    pub optional: bool,
    /// Default as JSON text (optional parameters only).
    pub default: Option<&'static str>,
}

/// One catalogue tool.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub name: &'static str,
    pub category: &'static str,
    pub description: &'static str,
    pub params: &'static [Param],
    /// English query templates.
    pub templates: &'static [&'static str],
    /// Non-English templates (Spanish, German, French, Chinese).
    pub intl: &'static [&'static str],
}

const fn r(name: &'static str, ty: &'static str, description: &'static str, gen: Gen) -> Param {
    Param {
        name,
        ty,
        description,
        gen,
        optional: false,
        default: None,
    }
}

const fn o(name: &'static str, ty: &'static str, description: &'static str, gen: Gen, default: &'static str) -> Param {
    Param {
        name,
        ty,
        description,
        gen,
        optional: true,
        default: Some(default),
    }
}

const UNITS_SYS: &[&str] = &["metric", "imperial"];
const POLLUTANTS: &[&str] = &["pm25", "pm10", "o3", "no2"];
const LENGTH_UNITS: &[&str] = &["m", "km", "cm", "mm", "mi", "ft", "in", "yd"];
const TEMP_SCALES: &[&str] = &["celsius", "fahrenheit", "kelvin"];
const WEIGHT_UNITS: &[&str] = &["kg", "g", "lb", "oz", "t"];
const VOLUME_UNITS: &[&str] = &["l", "ml", "gal", "qt", "cup"];
const SPEED_UNITS: &[&str] = &["kmh", "mph", "ms", "knots"];
const AREA_UNITS: &[&str] = &["m2", "km2", "ha", "acre", "ft2"];
const CABINS: &[&str] = &["economy", "premium_economy", "business", "first"];
const CAR_TYPES: &[&str] = &["compact", "suv", "van", "luxury"];
const SORTS: &[&str] = &["relevance", "price_asc", "price_desc", "rating"];
const MODES: &[&str] = &["driving", "walking", "transit", "cycling"];
const DIST_UNITS: &[&str] = &["km", "mi"];
const PLACE_TYPES: &[&str] = &["restaurant", "cafe", "museum", "pharmacy", "park", "hotel"];
const TRAVEL_MODES: &[&str] = &["car", "plane", "train"];
const LANG_CODES: &[&str] = &["en", "es", "de", "fr"];
const CHANNELS: &[&str] = &["#general", "#random", "#engineering", "#design", "#sales"];
const CHART_CODES: &[&str] = &["US", "GB", "FR", "DE", "ES", "JP", "BR"];

/// The catalogue. Order matters: index within a category decides held-out
/// membership (the 6th tool of each category).
pub static CATALOGUE: &[Tool] = &[
    // ---------------- weather ----------------
    Tool {
        name: "get_current_weather",
        category: "weather",
        description: "Get the current weather conditions for a city.",
        params: &[
            r("city", "str", "Name of the city, e.g. Paris.", Gen::City),
            o("units", "str, optional", "Unit system: metric or imperial. Defaults to metric.", Gen::Pick(UNITS_SYS), "\"metric\""),
        ],
        templates: &[
            "What's the weather like in {city} right now?",
            "Current weather in {city} in {units} units, please.",
            "Is it raining in {city} at the moment?",
            "Tell me the current temperature in {city}.",
        ],
        intl: &[
            "¿Qué tiempo hace ahora en {city}?",
            "Wie ist das Wetter gerade in {city}?",
            "Quel temps fait-il à {city} en ce moment ?",
            "{city}现在天气怎么样？",
        ],
    },
    Tool {
        name: "get_weather_forecast",
        category: "weather",
        description: "Get a daily weather forecast for a city for the next N days.",
        params: &[
            r("city", "str", "Name of the city.", Gen::City),
            r("days", "int", "Number of days to forecast (1-10).", Gen::Int(1, 10)),
            o("units", "str, optional", "Unit system: metric or imperial.", Gen::Pick(UNITS_SYS), "\"metric\""),
        ],
        templates: &[
            "Give me the {days}-day forecast for {city}.",
            "What will the weather be in {city} over the next {days} days?",
            "Forecast for {city} for {days} days in {units} units.",
        ],
        intl: &[
            "Pronóstico del tiempo para {city} en los próximos {days} días.",
            "Wettervorhersage für {city} für {days} Tage, bitte.",
        ],
    },
    Tool {
        name: "get_air_quality",
        category: "weather",
        description: "Get the air quality index and a pollutant concentration for a city.",
        params: &[
            r("city", "str", "Name of the city.", Gen::City),
            o("pollutant", "str, optional", "Pollutant to report: pm25, pm10, o3 or no2.", Gen::Pick(POLLUTANTS), "\"pm25\""),
        ],
        templates: &[
            "How is the air quality in {city} today?",
            "What is the {pollutant} level in {city}?",
            "Check the air pollution index for {city}.",
        ],
        intl: &["Wie ist die Luftqualität in {city}?"],
    },
    Tool {
        name: "get_uv_index",
        category: "weather",
        description: "Get the forecast UV index for a city on a date.",
        params: &[
            r("city", "str", "Name of the city.", Gen::City),
            r("date", "str", "Date in YYYY-MM-DD format.", Gen::Date),
        ],
        templates: &[
            "What's the UV index in {city} on {date}?",
            "Will the UV be strong in {city} on {date}?",
        ],
        intl: &[],
    },
    Tool {
        name: "get_sunrise_sunset",
        category: "weather",
        description: "Get sunrise and sunset times for a city on a given date.",
        params: &[
            r("city", "str", "Name of the city.", Gen::City),
            r("date", "str", "Date in YYYY-MM-DD format.", Gen::Date),
        ],
        templates: &[
            "When does the sun rise and set in {city} on {date}?",
            "Sunrise and sunset times for {city} on {date}.",
        ],
        intl: &["¿A qué hora amanece en {city} el {date}?"],
    },
    Tool {
        name: "get_historical_weather",
        category: "weather",
        description: "Get recorded weather observations for a city on a past date.",
        params: &[
            r("city", "str", "Name of the city.", Gen::City),
            r("date", "str", "Date in YYYY-MM-DD format.", Gen::Date),
        ],
        templates: &[
            "What was the weather in {city} on {date}?",
            "Show me historical weather data for {city} for {date}.",
        ],
        intl: &["Quel temps faisait-il à {city} le {date} ?"],
    },
    // ---------------- finance ----------------
    Tool {
        name: "get_stock_price",
        category: "finance",
        description: "Get the latest trading price of a stock by ticker symbol.",
        params: &[r("symbol", "str", "Stock ticker symbol, e.g. AAPL.", Gen::Pick(w::TICKER_SYMBOLS))],
        templates: &[
            "What's the current price of {symbol} stock?",
            "How much is {symbol} trading at?",
            "Get me a quote for {symbol}.",
        ],
        intl: &[
            "¿Cuál es el precio actual de la acción {symbol}?",
            "Wie steht die Aktie von {symbol}?",
            "{symbol}的股价是多少？",
        ],
    },
    Tool {
        name: "convert_currency",
        category: "finance",
        description: "Convert an amount of money from one currency to another using current rates.",
        params: &[
            r("amount", "float", "Amount of money to convert.", Gen::Float(1.0, 10000.0)),
            r("from_currency", "str", "ISO 4217 code of the source currency, e.g. USD.", Gen::Pick(w::CURRENCY_CODES)),
            r("to_currency", "str", "ISO 4217 code of the target currency, e.g. EUR.", Gen::PickOther(w::CURRENCY_CODES, "from_currency")),
        ],
        templates: &[
            "Convert {amount} {from_currency} to {to_currency}.",
            "How much is {amount} {from_currency} in {to_currency}?",
            "I have {amount} {from_currency}; what is that in {to_currency}?",
        ],
        intl: &[
            "¿Cuánto son {amount} {from_currency} en {to_currency}?",
            "Rechne {amount} {from_currency} in {to_currency} um.",
            "Convertis {amount} {from_currency} en {to_currency}.",
            "把{amount} {from_currency}换算成{to_currency}。",
        ],
    },
    Tool {
        name: "calculate_loan_payment",
        category: "finance",
        description: "Calculate the fixed monthly payment of an amortized loan.",
        params: &[
            r("principal", "float", "Loan amount.", Gen::Int(1000, 500000)),
            r("annual_rate", "float", "Annual interest rate in percent, e.g. 5.5.", Gen::Float(1.0, 12.0)),
            r("years", "int", "Loan term in years.", Gen::Int(1, 30)),
        ],
        templates: &[
            "What's the monthly payment on a {principal} loan at {annual_rate}% annual interest for {years} years?",
            "Calculate the monthly installment for borrowing {principal} over {years} years at {annual_rate} percent.",
        ],
        intl: &["Berechne die monatliche Rate für einen Kredit über {principal} mit {annual_rate}% Zinsen und {years} Jahren Laufzeit."],
    },
    Tool {
        name: "get_exchange_rate",
        category: "finance",
        description: "Get the current exchange rate between two currencies.",
        params: &[
            r("base", "str", "Base currency code.", Gen::Pick(w::CURRENCY_CODES)),
            r("target", "str", "Target currency code.", Gen::PickOther(w::CURRENCY_CODES, "base")),
        ],
        templates: &[
            "What's the exchange rate from {base} to {target}?",
            "Current {base} to {target} rate?",
        ],
        intl: &["Quel est le taux de change de {base} en {target} ?"],
    },
    Tool {
        name: "calculate_compound_interest",
        category: "finance",
        description: "Calculate the future value of an investment with compound interest.",
        params: &[
            r("principal", "float", "Initial investment.", Gen::Int(100, 100000)),
            r("rate", "float", "Annual interest rate in percent.", Gen::Float(0.5, 10.0)),
            r("years", "int", "Number of years.", Gen::Int(1, 40)),
            o("compounds_per_year", "int, optional", "Compounding periods per year. Defaults to 12.", Gen::IntChoice(&[1, 4, 12, 365]), "12"),
        ],
        templates: &[
            "If I invest {principal} at {rate}% for {years} years, how much will I have?",
            "Compound interest on {principal} at {rate}% over {years} years, compounded {compounds_per_year} times per year.",
        ],
        intl: &[],
    },
    Tool {
        name: "get_company_profile",
        category: "finance",
        description: "Get the company profile (name, sector, market cap) for a ticker symbol.",
        params: &[r("symbol", "str", "Stock ticker symbol.", Gen::Pick(w::TICKER_SYMBOLS))],
        templates: &[
            "Tell me about the company behind {symbol}.",
            "Get the company profile for ticker {symbol}.",
        ],
        intl: &[],
    },
    // ---------------- math ----------------
    Tool {
        name: "calculate_average",
        category: "math",
        description: "Calculate the arithmetic mean of a list of numbers.",
        params: &[r("numbers", "List[float]", "The numbers to average.", Gen::FloatList(0.0, 100.0))],
        templates: &[
            "Find the average of {numbers}.",
            "What is the mean of these numbers: {numbers}?",
        ],
        intl: &[
            "Calcula el promedio de {numbers}.",
            "Berechne den Durchschnitt von {numbers}.",
            "计算这些数字的平均值：{numbers}",
        ],
    },
    Tool {
        name: "calculate_standard_deviation",
        category: "math",
        description: "Calculate the standard deviation of a list of numbers.",
        params: &[
            r("numbers", "List[float]", "The numbers.", Gen::IntList(1, 100)),
            o("sample", "bool, optional", "Use the sample (n-1) formula instead of the population one.", Gen::Pick(&[]), "false"),
        ],
        templates: &[
            "Compute the standard deviation of {numbers}.",
            "What's the sample standard deviation of {numbers}?[sample=true]",
        ],
        intl: &[],
    },
    Tool {
        name: "find_prime_factors",
        category: "math",
        description: "Find the prime factorization of a positive integer.",
        params: &[r("number", "int", "Integer greater than 1.", Gen::Int(2, 100000))],
        templates: &["What are the prime factors of {number}?", "Factorize {number}."],
        intl: &["Zerlege {number} in Primfaktoren."],
    },
    Tool {
        name: "calculate_factorial",
        category: "math",
        description: "Calculate the factorial of a non-negative integer.",
        params: &[r("n", "int", "Non-negative integer (at most 20).", Gen::Int(0, 20))],
        templates: &["What is {n} factorial?", "Compute the factorial of {n}."],
        intl: &["Calcule la factorielle de {n}."],
    },
    Tool {
        name: "solve_quadratic",
        category: "math",
        description: "Solve a quadratic equation a*x^2 + b*x + c = 0.",
        params: &[
            r("a", "float", "Coefficient of x^2 (non-zero).", Gen::IntNonZero(-10, 10)),
            r("b", "float", "Coefficient of x.", Gen::Int(-20, 20)),
            r("c", "float", "Constant term.", Gen::Int(-20, 20)),
        ],
        templates: &[
            "Find the roots of the quadratic with a={a}, b={b}, c={c}.",
            "Solve the quadratic equation where a is {a}, b is {b} and c is {c}.",
        ],
        intl: &["Resuelve la ecuación cuadrática con a={a}, b={b} y c={c}."],
    },
    Tool {
        name: "calculate_gcd",
        category: "math",
        description: "Compute the greatest common divisor of two positive integers.",
        params: &[
            r("a", "int", "First integer.", Gen::Int(1, 1000)),
            r("b", "int", "Second integer.", Gen::Int(1, 1000)),
        ],
        templates: &["What is the greatest common divisor of {a} and {b}?", "GCD of {a} and {b}?"],
        intl: &[],
    },
    // ---------------- unit conversion ----------------
    Tool {
        name: "convert_length",
        category: "units",
        description: "Convert a length between units (m, km, cm, mm, mi, ft, in, yd).",
        params: &[
            r("value", "float", "The length to convert.", Gen::Float(0.1, 1000.0)),
            r("from_unit", "str", "Source unit: m, km, cm, mm, mi, ft, in or yd.", Gen::Pick(LENGTH_UNITS)),
            r("to_unit", "str", "Target unit: m, km, cm, mm, mi, ft, in or yd.", Gen::PickOther(LENGTH_UNITS, "from_unit")),
        ],
        templates: &["Convert {value} {from_unit} to {to_unit}.", "How many {to_unit} are in {value} {from_unit}?"],
        intl: &["Convierte {value} {from_unit} a {to_unit}.", "Rechne {value} {from_unit} in {to_unit} um."],
    },
    Tool {
        name: "convert_temperature",
        category: "units",
        description: "Convert a temperature between celsius, fahrenheit and kelvin.",
        params: &[
            r("value", "float", "Temperature value.", Gen::TempFor("from_scale")),
            r("from_scale", "str", "Source scale: celsius, fahrenheit or kelvin.", Gen::Pick(TEMP_SCALES)),
            r("to_scale", "str", "Target scale: celsius, fahrenheit or kelvin.", Gen::PickOther(TEMP_SCALES, "from_scale")),
        ],
        templates: &["Convert {value} degrees {from_scale} to {to_scale}.", "What is {value} {from_scale} in {to_scale}?"],
        intl: &["Combien font {value} degrés {from_scale} en {to_scale} ?"],
    },
    Tool {
        name: "convert_weight",
        category: "units",
        description: "Convert a weight/mass between kg, g, lb, oz and t.",
        params: &[
            r("value", "float", "The weight to convert.", Gen::Float(0.1, 1000.0)),
            r("from_unit", "str", "Source unit: kg, g, lb, oz or t.", Gen::Pick(WEIGHT_UNITS)),
            r("to_unit", "str", "Target unit: kg, g, lb, oz or t.", Gen::PickOther(WEIGHT_UNITS, "from_unit")),
        ],
        templates: &["Convert {value} {from_unit} to {to_unit}.", "How much is {value} {from_unit} in {to_unit}?"],
        intl: &[],
    },
    Tool {
        name: "convert_volume",
        category: "units",
        description: "Convert a volume between l, ml, gal, qt and cup.",
        params: &[
            r("value", "float", "The volume to convert.", Gen::Float(0.1, 500.0)),
            r("from_unit", "str", "Source unit: l, ml, gal, qt or cup.", Gen::Pick(VOLUME_UNITS)),
            r("to_unit", "str", "Target unit: l, ml, gal, qt or cup.", Gen::PickOther(VOLUME_UNITS, "from_unit")),
        ],
        templates: &["Convert {value} {from_unit} into {to_unit}.", "How many {to_unit} is {value} {from_unit}?"],
        intl: &[],
    },
    Tool {
        name: "convert_speed",
        category: "units",
        description: "Convert a speed between kmh, mph, ms (meters per second) and knots.",
        params: &[
            r("value", "float", "The speed to convert.", Gen::Float(1.0, 300.0)),
            r("from_unit", "str", "Source unit: kmh, mph, ms or knots.", Gen::Pick(SPEED_UNITS)),
            r("to_unit", "str", "Target unit: kmh, mph, ms or knots.", Gen::PickOther(SPEED_UNITS, "from_unit")),
        ],
        templates: &["Convert a speed of {value} {from_unit} to {to_unit}.", "What is {value} {from_unit} in {to_unit}?"],
        intl: &[],
    },
    Tool {
        name: "convert_area",
        category: "units",
        description: "Convert an area between m2, km2, ha, acre and ft2.",
        params: &[
            r("value", "float", "The area to convert.", Gen::Float(0.1, 10000.0)),
            r("from_unit", "str", "Source unit: m2, km2, ha, acre or ft2.", Gen::Pick(AREA_UNITS)),
            r("to_unit", "str", "Target unit: m2, km2, ha, acre or ft2.", Gen::PickOther(AREA_UNITS, "from_unit")),
        ],
        templates: &["Convert {value} {from_unit} to {to_unit}.", "How many {to_unit} are {value} {from_unit}?"],
        intl: &[],
    },
    // ---------------- travel ----------------
    Tool {
        name: "search_flights",
        category: "travel",
        description: "Search for flights between two cities on a date.",
        params: &[
            r("origin", "str", "Departure city.", Gen::City),
            r("destination", "str", "Arrival city.", Gen::CityOther("origin")),
            r("date", "str", "Departure date, YYYY-MM-DD.", Gen::Date),
            o("passengers", "int, optional", "Number of passengers. Defaults to 1.", Gen::Int(1, 6), "1"),
            o("cabin_class", "str, optional", "economy, premium_economy, business or first.", Gen::Pick(CABINS), "\"economy\""),
        ],
        templates: &[
            "Find flights from {origin} to {destination} on {date}.",
            "Search flights {origin} to {destination} on {date} for {passengers} passengers.",
            "I need a {cabin_class} flight from {origin} to {destination} on {date}.",
        ],
        intl: &[
            "Busca vuelos de {origin} a {destination} el {date}.",
            "Suche Flüge von {origin} nach {destination} am {date}.",
            "Trouve des vols de {origin} à {destination} le {date}.",
            "查找{date}从{origin}到{destination}的航班。",
        ],
    },
    Tool {
        name: "search_hotels",
        category: "travel",
        description: "Search hotels in a city for a stay.",
        params: &[
            r("city", "str", "City to stay in.", Gen::City),
            r("check_in", "str", "Check-in date, YYYY-MM-DD.", Gen::Date),
            r("check_out", "str", "Check-out date, YYYY-MM-DD (after check_in).", Gen::DateAfter("check_in", 1, 14)),
            o("guests", "int, optional", "Number of guests. Defaults to 2.", Gen::Int(1, 4), "2"),
        ],
        templates: &[
            "Find hotels in {city} from {check_in} to {check_out}.",
            "Hotels in {city} checking in {check_in} and out {check_out}, for {guests} guests.",
        ],
        intl: &["Busca hoteles en {city} del {check_in} al {check_out}."],
    },
    Tool {
        name: "get_flight_status",
        category: "travel",
        description: "Get the status (on time, delayed, cancelled) of a flight.",
        params: &[
            r("flight_number", "str", "IATA flight number, e.g. LH1234.", Gen::FlightNo),
            o("date", "str, optional", "Flight date, YYYY-MM-DD. Defaults to today.", Gen::Date, "\"\""),
        ],
        templates: &["What's the status of flight {flight_number}?", "Is flight {flight_number} on {date} delayed?"],
        intl: &["Hat der Flug {flight_number} Verspätung?"],
    },
    Tool {
        name: "find_car_rentals",
        category: "travel",
        description: "Find rental cars available in a city for a period.",
        params: &[
            r("city", "str", "Pickup city.", Gen::City),
            r("pickup_date", "str", "Pickup date, YYYY-MM-DD.", Gen::Date),
            r("return_date", "str", "Return date, YYYY-MM-DD.", Gen::DateAfter("pickup_date", 1, 10)),
            o("car_type", "str, optional", "compact, suv, van or luxury.", Gen::Pick(CAR_TYPES), "\"compact\""),
        ],
        templates: &[
            "Find rental cars in {city} from {pickup_date} to {return_date}.",
            "I need a {car_type} rental in {city} between {pickup_date} and {return_date}.",
        ],
        intl: &[],
    },
    Tool {
        name: "get_visa_requirements",
        category: "travel",
        description: "Get visa requirements for a passport holder travelling to a destination country.",
        params: &[
            r("passport_country", "str", "Country that issued the passport.", Gen::Pick(w::COUNTRIES)),
            r("destination_country", "str", "Destination country.", Gen::PickOther(w::COUNTRIES, "passport_country")),
        ],
        templates: &[
            "Do {passport_country} citizens need a visa to visit {destination_country}?",
            "Visa requirements for a {passport_country} passport holder travelling to {destination_country}.",
        ],
        intl: &[],
    },
    Tool {
        name: "get_travel_advisories",
        category: "travel",
        description: "Get current government travel advisories for a country.",
        params: &[r("country", "str", "Country name.", Gen::Pick(w::COUNTRIES))],
        templates: &["Are there any travel advisories for {country}?", "Is it safe to travel to {country} right now?"],
        intl: &[],
    },
    // ---------------- calendar ----------------
    Tool {
        name: "create_calendar_event",
        category: "calendar",
        description: "Create an event in the user's calendar.",
        params: &[
            r("title", "str", "Event title.", Gen::Pick(w::EVENT_TITLES)),
            r("date", "str", "Event date, YYYY-MM-DD.", Gen::Date),
            r("start_time", "str", "Start time, HH:MM (24h).", Gen::Time),
            o("duration_minutes", "int, optional", "Duration in minutes. Defaults to 60.", Gen::IntChoice(&[15, 30, 45, 60, 90, 120]), "60"),
        ],
        templates: &[
            "Schedule '{title}' on {date} at {start_time}.",
            "Create a calendar event called '{title}' on {date} at {start_time} lasting {duration_minutes} minutes.",
        ],
        intl: &[
            "Programa '{title}' el {date} a las {start_time}.",
            "Erstelle einen Termin '{title}' am {date} um {start_time}.",
        ],
    },
    Tool {
        name: "list_calendar_events",
        category: "calendar",
        description: "List calendar events in a date range.",
        params: &[
            r("start_date", "str", "First day, YYYY-MM-DD.", Gen::Date),
            r("end_date", "str", "Last day, YYYY-MM-DD.", Gen::DateAfter("start_date", 0, 30)),
        ],
        templates: &[
            "What's on my calendar between {start_date} and {end_date}?",
            "List my events from {start_date} to {end_date}.",
        ],
        intl: &[],
    },
    Tool {
        name: "days_between_dates",
        category: "calendar",
        description: "Count the number of days between two dates.",
        params: &[
            r("start_date", "str", "Start date, YYYY-MM-DD.", Gen::Date),
            r("end_date", "str", "End date, YYYY-MM-DD.", Gen::DateAfter("start_date", 1, 400)),
        ],
        templates: &[
            "How many days are there between {start_date} and {end_date}?",
            "Count the days from {start_date} until {end_date}.",
        ],
        intl: &["¿Cuántos días hay entre el {start_date} y el {end_date}?"],
    },
    Tool {
        name: "add_days_to_date",
        category: "calendar",
        description: "Add a number of days to a date and return the resulting date.",
        params: &[
            r("date", "str", "Start date, YYYY-MM-DD.", Gen::Date),
            r("days", "int", "Number of days to add.", Gen::Int(1, 365)),
        ],
        templates: &["What date is {days} days after {date}?", "Add {days} days to {date}."],
        intl: &[],
    },
    Tool {
        name: "get_day_of_week",
        category: "calendar",
        description: "Get the day of the week of a date.",
        params: &[r("date", "str", "Date, YYYY-MM-DD.", Gen::Date)],
        templates: &["What day of the week is {date}?", "Which weekday does {date} fall on?"],
        intl: &["¿Qué día de la semana es el {date}?", "{date}是星期几？"],
    },
    Tool {
        name: "get_public_holidays",
        category: "calendar",
        description: "List public holidays of a country in a year.",
        params: &[
            r("country_code", "str", "ISO 3166 alpha-2 country code, e.g. US.", Gen::Pick(w::COUNTRY_CODES)),
            r("year", "int", "Year.", Gen::Int(2024, 2027)),
        ],
        templates: &[
            "List the public holidays in {country_code} for {year}.",
            "What are the {year} bank holidays in {country_code}?",
        ],
        intl: &[],
    },
    // ---------------- e-commerce ----------------
    Tool {
        name: "search_products",
        category: "ecommerce",
        description: "Search the product catalogue.",
        params: &[
            r("query", "str", "Search terms.", Gen::Pick(w::PRODUCTS)),
            o("max_price", "float, optional", "Maximum price in USD.", Gen::Int(10, 500), "\"\""),
            o("sort_by", "str, optional", "relevance, price_asc, price_desc or rating.", Gen::Pick(SORTS), "\"relevance\""),
        ],
        templates: &[
            "Search for {query}.",
            "Find {query} under {max_price} dollars.",
            "Show me {query} sorted by {sort_by}.",
        ],
        intl: &["Busca {query} por menos de {max_price} dólares."],
    },
    Tool {
        name: "get_product_details",
        category: "ecommerce",
        description: "Get details (name, price, stock) of a product by id.",
        params: &[r("product_id", "str", "Product id, e.g. SKU-12345.", Gen::Sku)],
        templates: &["Show me the details of product {product_id}.", "What are the specs of item {product_id}?"],
        intl: &[],
    },
    Tool {
        name: "add_to_cart",
        category: "ecommerce",
        description: "Add a quantity of a product to the shopping cart.",
        params: &[
            r("product_id", "str", "Product id.", Gen::Sku),
            r("quantity", "int", "How many units (1-10).", Gen::Int(1, 10)),
        ],
        templates: &["Add {quantity} of {product_id} to my cart.", "Put {quantity} units of product {product_id} in the cart."],
        intl: &["Ajoute {quantity} exemplaires de {product_id} à mon panier."],
    },
    Tool {
        name: "track_order",
        category: "ecommerce",
        description: "Track the shipping status of an order.",
        params: &[r("order_id", "str", "Order id, e.g. ORD-123456.", Gen::OrderId)],
        templates: &["Where is my order {order_id}?", "Track order {order_id}."],
        intl: &["¿Dónde está mi pedido {order_id}?", "Wo ist meine Bestellung {order_id}?"],
    },
    Tool {
        name: "create_order",
        category: "ecommerce",
        description: "Place an order for one or more products.",
        params: &[
            r("items", "List[Dict[str, Any]]", "Items to order, each {\"product_id\": str, \"quantity\": int}.", Gen::OrderItems),
            r("shipping_city", "str", "Delivery city.", Gen::City),
            o("express", "bool, optional", "Use express shipping.", Gen::Pick(&[]), "false"),
        ],
        templates: &[
            "Place an order for {items}, shipped to {shipping_city}.",
            "Order {items} and deliver to {shipping_city} with express shipping.[express=true]",
        ],
        intl: &[],
    },
    Tool {
        name: "get_product_reviews",
        category: "ecommerce",
        description: "Get customer reviews of a product.",
        params: &[
            r("product_id", "str", "Product id.", Gen::Sku),
            o("min_rating", "int, optional", "Only reviews with at least this many stars (1-5).", Gen::Int(1, 5), "1"),
        ],
        templates: &["Show reviews for {product_id}.", "Get reviews of {product_id} with at least {min_rating} stars."],
        intl: &[],
    },
    // ---------------- sports ----------------
    Tool {
        name: "get_team_standings",
        category: "sports",
        description: "Get the league table for a season.",
        params: &[
            r("league", "str", "League name, e.g. Premier League, NBA.", Gen::Pick(w::LEAGUES)),
            r("season", "int", "Season start year.", Gen::Int(2015, 2025)),
        ],
        templates: &[
            "Show the {league} standings for the {season} season.",
            "Where did teams finish in the {league} in {season}?",
        ],
        intl: &["Muestra la clasificación de la {league} de la temporada {season}."],
    },
    Tool {
        name: "get_match_results",
        category: "sports",
        description: "Get the result of a team's match on a date.",
        params: &[
            r("team", "str", "Team name.", Gen::Pick(w::TEAMS)),
            r("date", "str", "Match date, YYYY-MM-DD.", Gen::Date),
        ],
        templates: &["What was the score of the {team} game on {date}?", "Results for {team} on {date}."],
        intl: &["¿Cómo quedó el partido del {team} el {date}?"],
    },
    Tool {
        name: "get_player_stats",
        category: "sports",
        description: "Get a player's statistics for a season.",
        params: &[
            r("player", "str", "Player full name.", Gen::Pick(w::PLAYERS)),
            r("season", "int", "Season start year.", Gen::Int(2015, 2025)),
        ],
        templates: &["Show {player}'s stats for the {season} season.", "How did {player} perform in {season}?"],
        intl: &[],
    },
    Tool {
        name: "get_upcoming_fixtures",
        category: "sports",
        description: "Get a team's upcoming matches.",
        params: &[
            r("team", "str", "Team name.", Gen::Pick(w::TEAMS)),
            o("limit", "int, optional", "Number of matches (1-10). Defaults to 5.", Gen::Int(1, 10), "5"),
        ],
        templates: &["When does {team} play next?", "Show the next {limit} matches for {team}."],
        intl: &["Wann spielt {team} als Nächstes?"],
    },
    Tool {
        name: "get_live_score",
        category: "sports",
        description: "Get the live score of a team's current match.",
        params: &[r("team", "str", "Team name.", Gen::Pick(w::TEAMS))],
        templates: &["What's the live score of the {team} game?", "Is {team} winning right now?"],
        intl: &[],
    },
    Tool {
        name: "get_league_top_scorers",
        category: "sports",
        description: "Get the top scorers of a league season.",
        params: &[
            r("league", "str", "League name.", Gen::Pick(w::LEAGUES)),
            r("season", "int", "Season start year.", Gen::Int(2015, 2025)),
            o("limit", "int, optional", "How many players. Defaults to 10.", Gen::Int(3, 20), "10"),
        ],
        templates: &[
            "Who are the top scorers in the {league} {season} season?",
            "List the top {limit} scorers of the {league} in {season}.",
        ],
        intl: &[],
    },
    // ---------------- music ----------------
    Tool {
        name: "search_songs",
        category: "music",
        description: "Search songs by keywords, optionally filtered by artist.",
        params: &[
            r("query", "str", "Search keywords.", Gen::Pick(w::SONG_QUERIES)),
            o("artist", "str, optional", "Restrict to this artist.", Gen::Pick(w::ARTISTS), "\"\""),
            o("limit", "int, optional", "Maximum results. Defaults to 10.", Gen::Int(1, 25), "10"),
        ],
        templates: &[
            "Find songs matching '{query}'.",
            "Search for '{query}' songs by {artist}.",
            "Give me {limit} songs for '{query}'.",
        ],
        intl: &[],
    },
    Tool {
        name: "get_artist_info",
        category: "music",
        description: "Get biography and top tracks of an artist.",
        params: &[r("artist", "str", "Artist or band name.", Gen::Pick(w::ARTISTS))],
        templates: &["Tell me about {artist}.", "Who is {artist}? Give me their bio."],
        intl: &["Háblame de {artist}.", "给我介绍一下{artist}。"],
    },
    Tool {
        name: "get_album_tracks",
        category: "music",
        description: "List the tracks of an album.",
        params: &[
            r("album", "str", "Album title.", Gen::Pick(w::ALBUMS)),
            o("include_duration", "bool, optional", "Include track durations.", Gen::Pick(&[]), "false"),
        ],
        templates: &[
            "List the tracks on the album '{album}'.",
            "What songs are on '{album}'? Include their durations.[include_duration=true]",
        ],
        intl: &[],
    },
    Tool {
        name: "create_playlist",
        category: "music",
        description: "Create a playlist with the given songs.",
        params: &[
            r("name", "str", "Playlist name.", Gen::Pick(w::PLAYLIST_NAMES)),
            r("songs", "List[str]", "Song titles to add.", Gen::StrList(w::SONGS)),
            o("public", "bool, optional", "Make the playlist public.", Gen::Pick(&[]), "false"),
        ],
        templates: &[
            "Create a playlist called '{name}' with {songs}.",
            "Make a public playlist named '{name}' containing {songs}.[public=true]",
        ],
        intl: &[],
    },
    Tool {
        name: "get_song_lyrics",
        category: "music",
        description: "Get the lyrics of a song.",
        params: &[
            r("title", "str", "Song title.", Gen::Pick(w::SONGS)),
            o("artist", "str, optional", "Artist, to disambiguate.", Gen::Pick(w::ARTISTS), "\"\""),
        ],
        templates: &["Show me the lyrics of '{title}'.", "Lyrics for '{title}' by {artist}, please."],
        intl: &[],
    },
    Tool {
        name: "get_top_charts",
        category: "music",
        description: "Get the current top songs chart of a country.",
        params: &[
            r("country_code", "str", "ISO country code, e.g. US.", Gen::Pick(CHART_CODES)),
            o("limit", "int, optional", "Number of songs. Defaults to 10.", Gen::Int(1, 50), "10"),
        ],
        templates: &["What are the top songs in {country_code} right now?", "Show the top {limit} chart in {country_code}."],
        intl: &[],
    },
    // ---------------- maps ----------------
    Tool {
        name: "get_directions",
        category: "maps",
        description: "Get route directions between two places.",
        params: &[
            r("origin", "str", "Start city.", Gen::City),
            r("destination", "str", "End city.", Gen::CityOther("origin")),
            o("mode", "str, optional", "driving, walking, transit or cycling. Defaults to driving.", Gen::Pick(MODES), "\"driving\""),
        ],
        templates: &["How do I get from {origin} to {destination}?", "Give me {mode} directions from {origin} to {destination}."],
        intl: &["¿Cómo llego de {origin} a {destination}?", "Wie komme ich von {origin} nach {destination}?"],
    },
    Tool {
        name: "calculate_distance",
        category: "maps",
        description: "Calculate the great-circle distance between two cities.",
        params: &[
            r("city_a", "str", "First city.", Gen::City),
            r("city_b", "str", "Second city.", Gen::CityOther("city_a")),
            o("unit", "str, optional", "km or mi. Defaults to km.", Gen::Pick(DIST_UNITS), "\"km\""),
        ],
        templates: &["How far is {city_a} from {city_b}?", "Distance between {city_a} and {city_b} in {unit}."],
        intl: &["Quelle est la distance entre {city_a} et {city_b} ?", "{city_a}到{city_b}有多远？"],
    },
    Tool {
        name: "find_nearby_places",
        category: "maps",
        description: "Find places of a given type near a city center.",
        params: &[
            r("city", "str", "City.", Gen::City),
            r("place_type", "str", "restaurant, cafe, museum, pharmacy, park or hotel.", Gen::Pick(PLACE_TYPES)),
            o("radius_m", "int, optional", "Search radius in meters. Defaults to 1000.", Gen::IntChoice(&[500, 1000, 2000, 5000]), "1000"),
        ],
        templates: &[
            "Find places of type {place_type} in {city}.",
            "Any {place_type} within {radius_m} meters of the center of {city}?",
            "Show me a {place_type} in {city}.",
        ],
        intl: &["Busca un {place_type} en {city}."],
    },
    Tool {
        name: "geocode_city",
        category: "maps",
        description: "Get the latitude and longitude of a city.",
        params: &[r("city", "str", "City name.", Gen::City)],
        templates: &["What are the coordinates of {city}?", "Get latitude and longitude for {city}."],
        intl: &[],
    },
    Tool {
        name: "get_timezone",
        category: "maps",
        description: "Get the time zone of a city.",
        params: &[r("city", "str", "City name.", Gen::City)],
        templates: &["What time zone is {city} in?", "What's the local time zone for {city}?"],
        intl: &["¿En qué zona horaria está {city}?"],
    },
    Tool {
        name: "estimate_travel_time",
        category: "maps",
        description: "Estimate the travel time between two cities by car, plane or train.",
        params: &[
            r("origin", "str", "Start city.", Gen::City),
            r("destination", "str", "End city.", Gen::CityOther("origin")),
            r("mode", "str", "car, plane or train.", Gen::Pick(TRAVEL_MODES)),
        ],
        templates: &[
            "How long does it take to travel from {origin} to {destination} by {mode}?",
            "Estimate the travel time by {mode} between {origin} and {destination}.",
        ],
        intl: &[],
    },
    // ---------------- search ----------------
    Tool {
        name: "web_search",
        category: "search",
        description: "Search the web and return result snippets.",
        params: &[
            r("query", "str", "Search query.", Gen::Pick(w::SEARCH_TOPICS)),
            o("num_results", "int, optional", "Number of results (1-20). Defaults to 10.", Gen::Int(1, 20), "10"),
        ],
        templates: &["Search the web for {query}.", "Look up '{query}' online and give me {num_results} results."],
        intl: &[],
    },
    Tool {
        name: "news_search",
        category: "search",
        description: "Search recent news articles on a topic.",
        params: &[
            r("topic", "str", "News topic.", Gen::Pick(w::NEWS_TOPICS)),
            o("from_date", "str, optional", "Earliest publication date, YYYY-MM-DD.", Gen::Date, "\"\""),
            o("language", "str, optional", "Language code: en, es, de or fr.", Gen::Pick(LANG_CODES), "\"en\""),
        ],
        templates: &[
            "Find news about {topic}.",
            "Latest {topic} news since {from_date}.",
            "News about {topic} in language {language}.",
        ],
        intl: &["Noticias sobre {topic}, por favor."],
    },
    Tool {
        name: "image_search",
        category: "search",
        description: "Search for images.",
        params: &[
            r("query", "str", "What to look for.", Gen::Pick(w::IMAGE_QUERIES)),
            o("safe_search", "bool, optional", "Filter explicit content. Defaults to true.", Gen::Pick(&[]), "true"),
        ],
        templates: &["Find pictures of {query}.", "Search images of {query} without safe search.[safe_search=false]"],
        intl: &[],
    },
    Tool {
        name: "wiki_lookup",
        category: "search",
        description: "Get the summary of a Wikipedia article.",
        params: &[
            r("title", "str", "Article title.", Gen::Pick(w::WIKI_TITLES)),
            o("lang", "str, optional", "Wikipedia language: en, es, de or fr.", Gen::Pick(LANG_CODES), "\"en\""),
        ],
        templates: &["Look up {title} on Wikipedia.", "Get the Wikipedia article on {title} in language {lang}."],
        intl: &["Cherche {title} sur Wikipédia."],
    },
    Tool {
        name: "search_recipes",
        category: "search",
        description: "Find recipes that use the given ingredients.",
        params: &[
            r("ingredients", "List[str]", "Ingredients to use.", Gen::StrList(w::INGREDIENTS)),
            o("max_minutes", "int, optional", "Maximum preparation time in minutes.", Gen::IntChoice(&[15, 20, 30, 45, 60]), "60"),
        ],
        templates: &["Find a recipe with {ingredients}.", "What can I cook with {ingredients} in under {max_minutes} minutes?"],
        intl: &["Busca una receta con {ingredients}."],
    },
    Tool {
        name: "search_jobs",
        category: "search",
        description: "Search job postings by title and city.",
        params: &[
            r("title", "str", "Job title.", Gen::Pick(w::JOB_TITLES)),
            r("city", "str", "City.", Gen::City),
            o("remote", "bool, optional", "Only remote-friendly positions.", Gen::Pick(&[]), "false"),
        ],
        templates: &["Find {title} jobs in {city}.", "Any remote {title} positions based in {city}?[remote=true]"],
        intl: &[],
    },
    // ---------------- messaging ----------------
    Tool {
        name: "send_email",
        category: "messaging",
        description: "Send an e-mail.",
        params: &[
            r("to", "str", "Recipient e-mail address.", Gen::Email),
            r("subject", "str", "Subject line.", Gen::Pick(w::SUBJECTS)),
            r("body", "str", "Message body.", Gen::Pick(w::BODIES)),
            o("cc", "str, optional", "CC address.", Gen::Email, "\"\""),
        ],
        templates: &[
            "Send an email to {to} with subject '{subject}' saying '{body}'.",
            "Email {to}: subject '{subject}', body '{body}', cc {cc}.",
        ],
        intl: &["Envía un correo a {to} con el asunto '{subject}' que diga '{body}'."],
    },
    Tool {
        name: "send_sms",
        category: "messaging",
        description: "Send a text message to a phone number.",
        params: &[
            r("phone_number", "str", "Phone number in international format.", Gen::Phone),
            r("message", "str", "Text to send.", Gen::Pick(w::SHORT_MESSAGES)),
        ],
        templates: &["Text {phone_number}: '{message}'.", "Send an SMS to {phone_number} saying '{message}'."],
        intl: &["Envía un SMS al {phone_number} que diga '{message}'."],
    },
    Tool {
        name: "post_slack_message",
        category: "messaging",
        description: "Post a message to a Slack channel.",
        params: &[
            r("channel", "str", "Channel name including #.", Gen::Pick(CHANNELS)),
            r("text", "str", "Message text.", Gen::Pick(w::SHORT_MESSAGES)),
        ],
        templates: &["Post '{text}' in {channel}.", "Send a Slack message to {channel}: '{text}'."],
        intl: &[],
    },
    Tool {
        name: "translate_text",
        category: "messaging",
        description: "Translate text into another language.",
        params: &[
            r("text", "str", "Text to translate.", Gen::Pick(w::PHRASES)),
            r("target_language", "str", "Target language name, e.g. Spanish.", Gen::Pick(w::LANGUAGE_NAMES)),
        ],
        templates: &["Translate '{text}' to {target_language}.", "How do you say '{text}' in {target_language}?"],
        intl: &[],
    },
    Tool {
        name: "create_reminder",
        category: "messaging",
        description: "Create a reminder notification.",
        params: &[
            r("text", "str", "What to be reminded of.", Gen::Pick(w::REMINDERS)),
            r("date", "str", "Date, YYYY-MM-DD.", Gen::Date),
            o("time", "str, optional", "Time HH:MM. Defaults to 09:00.", Gen::Time, "\"09:00\""),
        ],
        templates: &["Remind me to {text} on {date}.", "Set a reminder to {text} on {date} at {time}."],
        intl: &[],
    },
    Tool {
        name: "schedule_message",
        category: "messaging",
        description: "Schedule an e-mail message to be sent later.",
        params: &[
            r("to", "str", "Recipient e-mail address.", Gen::Email),
            r("message", "str", "Message text.", Gen::Pick(w::SHORT_MESSAGES)),
            r("send_date", "str", "Date to send, YYYY-MM-DD.", Gen::Date),
            r("send_time", "str", "Time to send, HH:MM.", Gen::Time),
        ],
        templates: &["Schedule a message to {to} saying '{message}' for {send_date} at {send_time}."],
        intl: &[],
    },
];

/// Index of a tool within its category (0-based).
fn index_in_category(i: usize) -> usize {
    let cat = CATALOGUE[i].category;
    CATALOGUE[..i].iter().filter(|t| t.category == cat).count()
}

/// True when catalogue tool `i` belongs to the held-out set (the 6th tool
/// of each category: 1/6 of the catalogue, one per category).
pub fn is_heldout(i: usize) -> bool {
    i < CATALOGUE.len() && index_in_category(i) == 5
}

/// Looks a catalogue tool up by name.
pub fn tool_by_name(name: &str) -> Option<&'static Tool> {
    CATALOGUE.iter().find(|t| t.name == name)
}

/// Names of the held-out tools.
pub fn heldout_names() -> Vec<&'static str> {
    (0..CATALOGUE.len()).filter(|&i| is_heldout(i)).map(|i| CATALOGUE[i].name).collect()
}

/// Distinct category names, in catalogue order.
pub fn categories() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for t in CATALOGUE {
        if !out.contains(&t.category) {
            out.push(t.category);
        }
    }
    out
}

/// Queries no catalogue tool can answer (plain-text answers expected).
pub static NO_TOOL_QUERIES: &[&str] = &[
    "Write a short poem about the ocean.",
    "Tell me a joke about programmers.",
    "What do you think makes a good friend?",
    "Give me three tips to sleep better.",
    "Explain the difference between a virus and a bacterium in simple terms.",
    "How do I tie a tie?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Suggest some names for a golden retriever puppy.",
    "Why is the sky blue?",
    "Can you help me write a thank-you note to my teacher?",
    "What are some good habits for learning a new language?",
    "Describe the taste of a mango to someone who has never had one.",
    "Hi! How are you today?",
    "Write a limerick about a cat who loves pizza.",
    "What's a good way to apologize to a friend?",
    "¿Me puedes contar un chiste?",
    "Schreib mir ein kurzes Gedicht über den Herbst.",
    "Peux-tu m'expliquer ce qu'est la photosynthèse ?",
    "给我讲一个关于猫的笑话。",
    "¿Qué consejos me das para hablar en público?",
];
