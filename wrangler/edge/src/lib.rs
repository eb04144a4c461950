use worker::*;

#[event(fetch)]
async fn fetch(_req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let role = env.var("COGNOMEGA_ROLE").map(|v| v.to_string()).unwrap_or_default();
    Response::ok(format!("role {role}"))
}
