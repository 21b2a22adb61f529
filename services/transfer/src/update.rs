//! UpdateEntity's field mask (AIP-134): which fields change, and the entity after the change.

use portal_platform::ApiError;
use portal_proto::transfer::v1::GroupEntity;

use crate::domain::invalid;

const UPDATABLE: [&str; 5] = [
    "legal_name",
    "country_code",
    "region",
    "security_level",
    "last_review_time",
];

/// The paths to update: as given (`*` for all five), or, with no mask, every one of the five
/// that is set in `given`.
pub fn paths(
    given: &GroupEntity,
    mask: Option<&prost_types::FieldMask>,
) -> Result<Vec<&'static str>, ApiError> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        let set = [
            !given.legal_name.is_empty(),
            !given.country_code.is_empty(),
            !given.region.is_empty(),
            given.security_level != 0,
            given.last_review_time.is_some(),
        ];
        let paths: Vec<_> = UPDATABLE
            .into_iter()
            .zip(set)
            .filter_map(|(path, set)| set.then_some(path))
            .collect();
        if paths.is_empty() {
            return Err(invalid("update_mask", "names no field to update"));
        }
        return Ok(paths);
    };
    let mut paths = Vec::new();
    for path in &mask.paths {
        match path.as_str() {
            "*" => paths.extend(UPDATABLE),
            "kind" => return Err(invalid("update_mask", "kind is immutable")),
            other => match UPDATABLE.into_iter().find(|p| *p == other) {
                Some(path) => paths.push(path),
                None => {
                    return Err(invalid(
                        "update_mask",
                        "only legal_name, country_code, region, security_level, last_review_time or *",
                    ));
                }
            },
        }
    }
    paths.sort_unstable();
    paths.dedup();
    Ok(paths)
}

/// `current` with the fields named by `paths` taken from `given`.
pub fn apply(current: &GroupEntity, given: &GroupEntity, paths: &[&str]) -> GroupEntity {
    let mut merged = current.clone();
    for path in paths {
        match *path {
            "legal_name" => merged.legal_name = given.legal_name.clone(),
            "country_code" => merged.country_code = given.country_code.clone(),
            "region" => merged.region = given.region.clone(),
            "security_level" => merged.security_level = given.security_level,
            "last_review_time" => merged.last_review_time = given.last_review_time,
            _ => {}
        }
    }
    merged
}
