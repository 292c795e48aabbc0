const body = {"grant_type": "client_credentials", "client_id": "<CLIENT_ID>", "client_secret": "<CLIENT_SECRET>"};
const params = Object.keys(body || {}).map((key) => { return key + '=' + body[key]; }).join('&');
const {data, headers} = await os.postRequest("<OAUTH_AUTHENTICATION_URL>", params, {headers: {'content-type': 'application/x-www-form-urlencoded'}});
const token = 'Bearer ' + data.access_token;
os.context.set("request.headers.authorization", token);
